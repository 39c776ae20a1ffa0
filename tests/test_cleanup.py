"""cleanup(): selection by age, ids, task, agent and best-N; lineage-aware; exact dry runs."""

from __future__ import annotations

import time
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from fle_db import DatabaseClient, NotFoundError, ValidationError
from fle_db.workload import Workload


def _run(db: DatabaseClient, tid: str, task: str, reward: float | None, steps: int = 3, agent: str = "a") -> None:
    work = Workload(zlib.crc32(tid.encode()))  # distinct data per trajectory: nothing shared
    db.save_trajectory({"id": tid, "task": task, "agent_type": agent, "total_reward": reward})
    for n in range(steps):
        cp = work.checkpoint(0, n, tid)
        db.save_step(cp["step"], agent_output=cp["agent_output"], game_state=cp["game_state"])
    db.save_metadata(tid, "seed", 1)


def _count(db: DatabaseClient, table: str) -> int:
    with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 0)


def test_cleanup_needs_a_criterion(db: DatabaseClient) -> None:
    with pytest.raises(ValidationError, match="criterion"):
        db.cleanup()
    with pytest.raises(ValidationError):
        db.cleanup(older_than=10, before="2024-01-01T00:00:00+00:00")
    with pytest.raises(ValidationError, match="timezone"):
        db.cleanup(before=datetime(2024, 1, 1))


def test_keep_best_per_task_deletes_the_rest_with_their_states_and_blobs(db: DatabaseClient) -> None:
    for tid, task, reward in [("a1", "iron", 5.0), ("a2", "iron", 9.0), ("a3", "iron", None), ("b1", "copper", 1.0)]:
        _run(db, tid, task, reward)
    report = db.cleanup(keep_best_per_task=1)
    assert report["trajectories"] == ["a1", "a3"] and report["dry_run"] is False
    rows = report["rows"]
    assert rows["trajectories"] == 2 and rows["steps"] == 6 and rows["agent_outputs"] == 6
    assert rows["trajectory_metadata"] == 2 and rows["game_states"] == 6 and rows["blobs"] > 0
    assert report["bytes_freed"] > 0
    for gone in ("a1", "a3"):
        with pytest.raises(NotFoundError):
            db.load_trajectory(gone)
    for kept in ("a2", "b1"):
        assert len(db.load_steps(kept)) == 3
        assert db.load_latest_checkpoint(kept)["game_state"]  # type: ignore[index]
    assert _count(db, "game_states") == 6


def test_a_dry_run_reports_exactly_what_the_real_run_removes(db: DatabaseClient) -> None:
    for tid, task in [("x1", "t"), ("x2", "t"), ("y1", "u")]:
        _run(db, tid, task, 1.0)
    before = {t: _count(db, t) for t in ("steps", "game_states", "blobs")}
    dry = db.cleanup(task="t", dry_run=True)
    assert dry["dry_run"] is True and dry["trajectories"] == ["x1", "x2"]
    assert {t: _count(db, t) for t in before} == before  # nothing changed
    real = db.cleanup(task="t")
    assert {k: v for k, v in real.items() if k != "dry_run"} == {k: v for k, v in dry.items() if k != "dry_run"}
    assert _count(db, "steps") == 3


def test_forks_keep_the_trajectories_they_descend_from(db: DatabaseClient) -> None:
    _run(db, "root", "t", 1.0)
    _run(db, "mid", "t", 1.0)
    db.save_trajectory({"id": "leaf", "task": "keep", "parent_trajectory_id": "mid", "parent_step_number": 1})
    db.save_trajectory({"id": "mid", "parent_trajectory_id": "root", "parent_step_number": 2})
    report = db.cleanup(task="t")
    assert report["trajectories"] == [] and report["kept_for_lineage"] == ["mid", "root"]
    report = db.cleanup(trajectory_ids=["leaf", "mid", "root"])
    assert report["trajectories"] == ["leaf", "mid", "root"] and report["kept_for_lineage"] == []


def test_age_selects_trajectories_without_recent_activity(db: DatabaseClient) -> None:
    _run(db, "old", "t", 1.0, steps=1)
    time.sleep(0.05)
    cutoff = datetime.now(UTC)
    time.sleep(0.05)
    _run(db, "new", "t", 1.0, steps=1)
    assert db.cleanup(before=cutoff.isoformat(), dry_run=True)["trajectories"] == ["old"]
    assert db.cleanup(before=cutoff.timestamp(), dry_run=True)["trajectories"] == ["old"]  # as restore_to
    assert db.cleanup(older_than=timedelta(days=1))["trajectories"] == []
    assert db.cleanup(before=cutoff)["trajectories"] == ["old"]
    assert db.load_trajectory("new")["id"] == "new"


def test_before_takes_every_instant_form_restore_to_takes_and_refuses_the_rest(db: DatabaseClient) -> None:
    _run(db, "old", "t", 1.0, steps=1)
    time.sleep(0.01)
    cutoff = datetime.now(UTC)
    for form in (cutoff, cutoff.isoformat(), cutoff.timestamp(), int(cutoff.timestamp()) + 1):
        assert db.cleanup(before=form, dry_run=True)["trajectories"] == ["old"]
    for bad in (True, -1, float("nan"), 1e12, "yesterday", b"2024"):
        with pytest.raises(ValidationError, match="before"):
            db.cleanup(before=bad, dry_run=True)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="trajectory_ids"):
        db.cleanup(trajectory_ids="not an id!")


def test_agent_and_id_filters_combine(db: DatabaseClient) -> None:
    _run(db, "p", "t", 1.0, agent="A")
    _run(db, "q", "t", 1.0, agent="B")
    assert db.cleanup(agent_type="B", trajectory_ids=["p", "q"], dry_run=True)["trajectories"] == ["q"]
