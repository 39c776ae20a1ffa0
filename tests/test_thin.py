"""thin(): fork-aware dropping of game states, re-encoding, typed errors, exact dry runs, history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ALL_BACKENDS
from sqlalchemy import text

from fle_db import DatabaseClient, NotFoundError, StateThinnedError, ValidationError
from fle_db.schema import HISTORY, VERSIONED_TABLES


@pytest.fixture(params=ALL_BACKENDS)
def any_db(request: pytest.FixtureRequest, make_url: Any) -> Iterator[DatabaseClient]:
    client = DatabaseClient(make_url(request.param))
    yield client
    client.close()


def _state(tid: str, n: int) -> dict[str, Any]:
    """A state with a large part that changes a little per step (stored as deltas of a keyframe
    cut every 32 values) and small keys."""
    grid = [(i * 7919 + len(tid)) % 1000 for i in range(1500)]
    grid[n % 1500] = -n
    return {"grid": grid, "tick": n, "who": tid}


def _checkpoint(tid: str, n: int, **step: Any) -> dict[str, Any]:
    return {
        "step": {"trajectory_id": tid, "step_number": n, "reward": n / 10, "action": f"act {n}", **step},
        "agent_output": {"trajectory_id": tid, "step_number": n, "text": f"out {n}"},
        "environment_feedback": {"trajectory_id": tid, "step_number": n, "ok": n % 2 == 0},
        "game_state": _state(tid, n),
    }


def _save(db: DatabaseClient, tid: str, numbers: range, **step: Any) -> None:
    for n in numbers:
        cp = _checkpoint(tid, n, **step)
        db.save_step(cp["step"], agent_output=cp["agent_output"], environment_feedback=cp["environment_feedback"],
                     game_state=cp["game_state"])  # fmt: skip


def _kept_states(db: DatabaseClient, tid: str) -> list[int]:
    kept = []
    for step in db.load_steps(tid):
        try:
            db.load_checkpoint(tid, step["step_number"])
            kept.append(step["step_number"])
        except StateThinnedError:
            pass
    return kept


def _payload_bytes(db: DatabaseClient) -> int:
    """Stored payload bytes of every live and history table (as cleanup measures them)."""
    tables = [t.name for t in VERSIONED_TABLES if "body" in t.c] + [h.name for h in HISTORY.values() if "body" in h.c]
    with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        return sum(int(conn.execute(text(f"SELECT coalesce(sum(length(body)), 0) FROM {t}")).scalar() or 0)
                   for t in tables)  # fmt: skip


def test_thin_keeps_latest_fork_points_nodes_and_every_kth_and_every_record(any_db: DatabaseClient) -> None:
    db = any_db
    _save(db, "run", range(45))
    db.save_trajectory({"id": "fork", "parent_trajectory_id": "run", "parent_step_number": 23})
    _save(db, "fork", range(24, 26))
    _save(db, "tree", range(3))
    db.save_step({"trajectory_id": "tree", "step_number": 3, "parent_trajectory_id": "run", "parent_step_number": 31})
    db.save_step({"trajectory_id": "run", "step_number": 45}, node={"tree": "t", "depth": 1, "value": 1.0})
    before = db.load_steps("run", with_parts=True)
    report = db.thin(trajectory_ids=["run"], keep_every=10)
    # every 10th, the fork points, the latest with a state (44); 45 (latest, a node) has none
    kept = [0, 10, 20, 23, 30, 31, 40, 44]
    assert _kept_states(db, "run") == [*kept, 45]
    assert report["steps_thinned"] == 45 - len(kept) and report["game_states"] == 45 - len(kept)
    assert report["trajectories"] == ["run"] and report["dry_run"] is False and report["bytes_freed"] > 0
    assert db.load_steps("run", with_parts=True) == before  # actions, outputs, feedbacks, rewards
    for n in kept:
        assert db.load_checkpoint("run", n)["game_state"] == _state("run", n)
    with pytest.raises(StateThinnedError, match="thinned") as caught:
        db.load_checkpoint("run", 5)
    assert isinstance(caught.value, NotFoundError)
    state_id = before[5]["game_state_id"]
    with pytest.raises(StateThinnedError):
        db.load_game_state(state_id)
    with pytest.raises(StateThinnedError):
        db.load_game_states([before[10]["game_state_id"], state_id])
    assert db.load_latest_checkpoint("fork")["game_state"] == _state("fork", 25)  # type: ignore[index]
    assert db.validate()["ok"], db.validate()["problems"]
    assert db.thin(trajectory_ids=["run"], keep_every=10)["game_states"] == 0  # idempotent
    assert db.get_performance_metrics()["operations"]["thin"]["count"] == 2


def test_a_fork_without_steps_resumes_from_its_thinned_parents_fork_point(any_db: DatabaseClient) -> None:
    _save(any_db, "p", range(15))
    any_db.save_trajectory({"id": "child", "parent_trajectory_id": "p", "parent_step_number": 7})
    any_db.thin(trajectory_ids=["p", "child"], keep_every=5)
    resumed = any_db.load_latest_checkpoint("child")
    assert resumed is not None and resumed["game_state"] == _state("p", 7)
    assert resumed["inherited_from"] == {"trajectory_id": "p", "step_number": 7}
    assert _kept_states(any_db, "p") == [0, 5, 7, 10, 14]


def test_kept_deltas_of_a_dropped_keyframe_are_reencoded(any_db: DatabaseClient) -> None:
    _save(any_db, "d", range(41))  # keyframes of "grid" at 0 and 33 (every 32 deltas)
    report = any_db.thin(trajectory_ids=["d"], keep_every=5)
    assert report["blobs_reencoded"] >= 2  # 35 and 40 were deltas of 33
    for n in _kept_states(any_db, "d"):
        assert any_db.load_checkpoint("d", n)["game_state"] == _state("d", n)
    assert _kept_states(any_db, "d") == list(range(0, 41, 5))
    fresh = DatabaseClient(any_db.settings.url.render_as_string(hide_password=False))  # an empty cache
    try:
        assert fresh.load_checkpoint("d", 35)["game_state"] == _state("d", 35)
        assert fresh.validate()["ok"]
    finally:
        fresh.close()
    with any_db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        deltas_of_deltas = conn.execute(
            text("SELECT count(*) FROM blobs b JOIN blobs k ON k.id = b.base_id WHERE k.base_id IS NOT NULL")
        ).scalar()
    assert deltas_of_deltas == 0


def test_a_state_another_kept_step_uses_stays(any_db: DatabaseClient) -> None:
    shared = _state("x", 3)
    any_db.save_step({"trajectory_id": "a", "step_number": 0}, game_state={"first": 1})
    any_db.save_step({"trajectory_id": "a", "step_number": 3}, game_state=shared)
    any_db.save_step({"trajectory_id": "a", "step_number": 4}, game_state={"last": 1})
    any_db.save_step({"trajectory_id": "b", "step_number": 0}, game_state=shared)
    report = any_db.thin(trajectory_ids=["a"], keep_every=10)
    assert report["game_states"] == 0
    assert any_db.load_checkpoint("a", 3)["game_state"] == shared


def test_dry_run_bytes_equal_what_a_real_run_and_a_prune_free(any_db: DatabaseClient) -> None:
    db = any_db
    _save(db, "m", range(41))
    _save(db, "other", range(5))
    db._history.prune_history(time.time_ns() // 1000 + 1)  # no history to begin with
    total = _payload_bytes(db)
    dry = db.thin(task=None, trajectory_ids=["m"], keep_every=5, dry_run=True)
    assert dry["dry_run"] is True and _payload_bytes(db) == total  # nothing changed
    real = db.thin(trajectory_ids=["m"], keep_every=5)
    assert {k: v for k, v in real.items() if k != "dry_run"} == {k: v for k, v in dry.items() if k != "dry_run"}
    assert total - _payload_bytes(db) == real["bytes_freed_now"] < 0  # the dropped rows are in history
    time.sleep(0.01)
    db._history.prune_history(time.time_ns() // 1000)
    assert total - _payload_bytes(db) == real["bytes_freed"] > 0


def test_figures_stay_exact_when_trajectories_share_blobs(any_db: DatabaseClient) -> None:
    _save(any_db, "m1", range(70))  # "m1" and "m2" have the same grids: shared, content-addressed blobs
    _save(any_db, "m2", range(3, 70, 2))
    for selection, keep_every in ((["m1"], 7), (["m1", "m2"], 3), (["m2"], 100)):
        any_db._history.prune_history(time.time_ns() // 1000 + 1)
        total = _payload_bytes(any_db)
        dry = any_db.thin(trajectory_ids=selection, keep_every=keep_every, dry_run=True)
        real = any_db.thin(trajectory_ids=selection, keep_every=keep_every)
        assert {k: v for k, v in real.items() if k != "dry_run"} == {k: v for k, v in dry.items() if k != "dry_run"}
        assert total - _payload_bytes(any_db) == real["bytes_freed_now"]
        time.sleep(0.01)
        any_db._history.prune_history(time.time_ns() // 1000)
        assert total - _payload_bytes(any_db) == real["bytes_freed"]
        for tid in ("m1", "m2"):
            for n in _kept_states(any_db, tid):
                assert any_db.load_checkpoint(tid, n)["game_state"] == _state(tid, n)
    assert any_db.validate()["ok"]


def test_restore_to_an_instant_before_the_thinning_gives_the_full_data(any_db: DatabaseClient) -> None:
    _save(any_db, "r", range(20))
    time.sleep(0.01)
    before = datetime.now(UTC)
    time.sleep(0.01)
    any_db.thin(trajectory_ids=["r"], keep_every=10)
    assert _kept_states(any_db, "r") == [0, 10, 19]
    any_db.restore_to(before)
    assert _kept_states(any_db, "r") == list(range(20))
    assert any_db.load_checkpoint("r", 7)["game_state"] == _state("r", 7)
    assert any_db.validate()["ok"]


def test_resaving_or_reimporting_the_original_restores_the_state(any_db: DatabaseClient, tmp_path: Path) -> None:
    _save(any_db, "s", range(12))
    original = tmp_path / "original.jsonl"
    any_db.export_data(original)
    any_db.thin(trajectory_ids=["s"], keep_every=10)
    cp = _checkpoint("s", 4)
    saved = any_db.save_step(cp["step"], agent_output=cp["agent_output"],
                             environment_feedback=cp["environment_feedback"], game_state=cp["game_state"])  # fmt: skip
    assert saved["created"] is False and any_db.load_checkpoint("s", 4)["game_state"] == _state("s", 4)
    thinned = tmp_path / "thinned.jsonl"
    assert any_db.export_data(thinned)["checkpoints"] == 12  # thinned states do not stop an export
    lines = [orjson.loads(line) for line in thinned.read_bytes().splitlines()]
    cps = {line["step_number"]: line for line in lines if line["kind"] == "checkpoint"}
    assert cps[5]["game_state"] is None and cps[5]["step"]["game_state_id"] is not None
    assert cps[4]["game_state"] == _state("s", 4)
    same = any_db.import_data(thinned)  # the thinned export is what is stored: nothing to do
    assert same["trajectories"]["unchanged"] == 1 and same["game_states_restored"] == 0
    report = any_db.import_data(original)
    assert (
        report["trajectories"]["unchanged"] == 1 and report["game_states_restored"] == 8
    )  # 1-9 but 4, saved again above
    assert _kept_states(any_db, "s") == list(range(12))
    assert any_db.validate()["ok"]


def test_thin_search_nodes_keeps_the_best_per_depth_and_search_skips_the_rest(any_db: DatabaseClient) -> None:
    db = any_db
    values = {1: 0.5, 2: 0.9, 3: 0.1, 4: 0.7, 5: 0.2}
    db.save_step({"trajectory_id": "n", "step_number": 0}, game_state=_state("n", 0))
    for n, value in values.items():
        db.save_step({"trajectory_id": "n", "step_number": n}, game_state=_state("n", n),
                     node={"tree": "T", "depth": 1 + n % 2, "value": value})  # fmt: skip
    db.save_step({"trajectory_id": "n", "step_number": 6}, game_state=_state("n", 6))
    assert db.thin(trajectory_ids=["n"], keep_every=100)["game_states"] == 0  # nodes are kept by default
    report = db.thin(trajectory_ids=["n"], keep_every=100, thin_search_nodes=True, keep_best_per_depth=1)
    assert _kept_states(db, "n") == [0, 1, 2, 6]  # depth 1: 2 (0.9) of 2, 4; depth 2: 1 (0.5) of 1, 3, 5
    assert report["game_states"] == 3
    with_state = db.get_search_nodes("T", with_state=True)
    assert [node["step_number"] for node in with_state] == [2, 1]
    assert len(db.get_search_nodes("T")) == 5


def test_age_selects_like_cleanup(any_db: DatabaseClient) -> None:
    _save(any_db, "old", range(12))
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    time.sleep(0.05)
    _save(any_db, "new", range(12))
    assert any_db.thin(before=cutoff, dry_run=True)["trajectories"] == ["old"]
    assert any_db.thin(older_than=timedelta(days=1))["trajectories"] == []
    assert any_db.thin(before=cutoff.isoformat(), task=None)["trajectories"] == ["old"]
    assert _kept_states(any_db, "new") == list(range(12))


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({}, "at least one criterion"),
        ({"task": "t", "keep_every": 0}, "keep_every"),
        ({"task": "t", "keep_every": -3}, "keep_every"),
        ({"task": "t", "keep_every": True}, "keep_every"),
        ({"task": "t", "keep_every": "10"}, "keep_every"),
        ({"task": "t", "keep_every": 2.5}, "keep_every"),
        ({"task": "t", "keep_best_per_depth": 0}, "keep_best_per_depth"),
        ({"task": "t", "thin_search_nodes": "yes"}, "thin_search_nodes"),
        ({"task": "t", "dry_run": 1}, "dry_run"),
        ({"older_than": 10, "before": "2024-01-01T00:00:00+00:00"}, "not both"),
        ({"before": datetime(2024, 1, 1)}, "timezone"),
        ({"older_than": -1}, "older_than"),
        ({"trajectory_ids": "not an id!"}, "trajectory_ids"),
        ({"task": "\x00"}, "task"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_done(
    any_db: DatabaseClient, arguments: dict[str, Any], match: str
) -> None:
    _save(any_db, "t", range(3))
    with pytest.raises(ValidationError, match=match):
        any_db.thin(**arguments)
    assert _kept_states(any_db, "t") == [0, 1, 2]


def test_the_viewer_shows_a_thinned_step_with_its_records(any_db: DatabaseClient) -> None:
    from fle_db.ui import views

    _save(any_db, "v", range(12))
    any_db.thin(trajectory_ids=["v"], keep_every=10)
    page = views.step(any_db, "v", 5)
    assert page["state_thinned"] is True and page["state_keys"] is None
    assert page["agent_output"]["text"] == "out 5" and page["step"]["action"] == "act 5"
    assert views.step(any_db, "v", 10)["state_thinned"] is False


def test_thinning_while_other_runs_are_written_loses_nothing(any_db: DatabaseClient) -> None:
    import threading

    _save(any_db, "old", range(60))
    errors: list[BaseException] = []

    def write(tid: str) -> None:
        try:
            _save(any_db, tid, range(30))
        except BaseException as exc:  # reported below
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(f"live{i}",)) for i in range(2)]
    for thread in writers:
        thread.start()
    for keep_every in (2, 4, 8):  # each pass keeps a subset of the previous one's states
        any_db.thin(trajectory_ids=["old"], keep_every=keep_every)
    for thread in writers:
        thread.join()
    assert errors == []
    for tid in ("live0", "live1"):
        assert _kept_states(any_db, tid) == list(range(30))
        assert any_db.load_checkpoint(tid, 17)["game_state"] == _state(tid, 17)
    assert _kept_states(any_db, "old") == [*range(0, 60, 8), 59]
    assert any_db.validate()["ok"]
