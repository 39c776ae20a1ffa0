"""Export and import (issue 4 item 4, the export half of items 5 and 6), on every backend.

The data set mixes what export must carry: FLE-like checkpoints with game states, metadata of
every JSON type, forks whose ids sort before their parents, a trajectory without steps, steps
without outputs and an agent output saved without its step.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import stat
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from fle_db import (
    ConfigurationError,
    ConflictError,
    DatabaseClient,
    DataIntegrityError,
    NotFoundError,
    SchemaVersionError,
    ValidationError,
)
from fle_db.cli import main
from fle_db.schema import metadata as schema_metadata
from fle_db.schema import steps
from fle_db.workload import Workload

MakeUrl = Callable[[str], str]
EXOTIC = {
    "int": 1,
    "float_one": 1.0,
    "huge": 1e300,
    "tiny": -5e-324,
    "big_int": 2**63 - 1,
    "neg": -(2**63),
    "bool": True,
    "none": None,
    "text": "naïve ☃ \U0001f600 \\u0000 literal",
    "nested": {"b": [1, [2.5, {"c": []}], {}], "a": ""},
}


def canon(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def trajectory_ids(db: DatabaseClient) -> list[str]:
    return sorted(db._backend.iter_trajectory_ids())


def dump(db: DatabaseClient) -> dict[str, bytes]:
    """Everything the API returns, per trajectory, as canonical JSON (types included)."""
    out = {}
    for tid in trajectory_ids(db):
        steps = db.load_steps(tid)
        state_ids = [s["game_state_id"] for s in steps if s["game_state_id"]]
        out[tid] = canon(
            {
                "trajectory": db.load_trajectory(tid),
                "metadata": db.load_metadata(tid),
                "steps": steps,
                "agent_outputs": db.load_agent_outputs(tid),
                "environment_feedbacks": db.load_environment_feedbacks(tid),
                "states": db.load_game_states(state_ids),
            }
        )
    return out


def raw_tables(db: DatabaseClient) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, timestamps included: proves that nothing at all was written."""
    with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        return {
            table.name: sorted(tuple(row) for row in conn.execute(select(table)))
            for table in schema_metadata.sorted_tables
        }


def fill(db: DatabaseClient, trajectories: int = 3, steps: int = 4, seed: int = 0, prefix: str = "") -> None:
    """FLE-like trajectories plus the awkward cases (see the module docstring)."""
    wl = Workload(seed)
    for t in range(trajectories):
        tid = f"{prefix}wl-{seed}-{t}"
        db.save_trajectory({**wl.trajectory(t, tid), "agent_type": f"agent-{t % 2}", "system_prompt": "You play."})
        db.batch_save_steps(
            [
                {**wl.step_record(t, n, tid), **{k: v for k, v in wl.checkpoint(t, n, tid).items() if k != "step"}}
                for n in range(steps)
            ]
        )
        db.save_metadata(tid, "exotic", EXOTIC)
        db.save_metadata(tid, "index", t)
        db.save_trajectory({"id": tid, "total_reward": 1.5 * t, "success": t % 2 == 0})
    parent = f"{prefix}wl-{seed}-{trajectories - 1}"
    # Forks whose ids sort before their parents: the export must still put parents first.
    db.save_trajectory({"id": f"{prefix}a-fork", "parent_trajectory_id": parent, "parent_step_number": 1})
    db.save_step(
        {"trajectory_id": f"{prefix}a-fork", "step_number": 2, "action": "fork()", "observation": EXOTIC},
        game_state={"only": "fork", "x": 1.0},
    )
    db.save_trajectory(
        {"id": f"{prefix}0-grandchild", "parent_trajectory_id": f"{prefix}a-fork", "parent_step_number": 2}
    )
    db.save_trajectory({"id": f"{prefix}empty", "task": "nothing", "start_time": None})
    db.save_step({"trajectory_id": f"{prefix}bare", "step_number": 0, "action": {"not": "code"}, "reward": 0})
    db.save_agent_output({"trajectory_id": f"{prefix}bare", "step_number": 7, "code": "orphan()"})


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write_lines(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def reseal(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Recompute every trajectory_end digest, as a careful forger (or a buggy writer) would."""
    digest = hashlib.blake2b(digest_size=16)
    for record in records:
        if record["kind"] == "trajectory":
            digest = hashlib.blake2b(digest_size=16)
        if record["kind"] in ("trajectory", "checkpoint"):
            digest.update(orjson.dumps(record) + b"\n")
        if record["kind"] == "trajectory_end":
            record["digest"] = digest.hexdigest()
    return records


@pytest.fixture
def filled(db: DatabaseClient) -> DatabaseClient:
    fill(db)
    return db


@pytest.fixture
def target(backend: str, make_url: MakeUrl) -> Any:
    client = DatabaseClient(make_url(backend))
    yield client
    client.close()


# -- round trip, idempotency ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["export.jsonl", "export.jsonl.zst"])
def test_export_then_import_into_an_empty_database_gives_identical_data(
    filled: DatabaseClient, target: DatabaseClient, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    report = filled.export_data(path)
    assert report["trajectories"] == 7 and report["checkpoints"] == 3 * 4 + 1 + 2
    assert (path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd") == name.endswith(".zst")
    counts = target.import_data(path)
    assert counts["trajectories"] == {"created": 7, "updated": 0, "unchanged": 0}
    assert counts["steps"] == {"created": 14, "present": 0}
    assert counts["agent_outputs"] == {"created": 13, "present": 0}
    assert counts["metadata"] == {"created": 6, "present": 0}
    assert dump(target) == dump(filled)
    assert target.validate()["ok"]


def test_pages_of_one_step_and_one_state_export_the_same_file_with_deltas_resolved_across_pages(
    db: DatabaseClient, target: DatabaseClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fle_db.ops.export import reader as export

    fill(db, trajectories=2, steps=40)
    with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        deltas = conn.execute(select(func.count()).where(steps.c.base_step_number.is_not(None))).scalar()
    assert deltas, "the data must hold records stored as deltas of a keyframe on an earlier page"
    whole = tmp_path / "whole.jsonl"
    db.export_data(whole)
    monkeypatch.setattr(export, "_PAGE_STEPS", 3)
    monkeypatch.setattr(export, "_PAGE_BYTES", 1)  # every page is its first step number alone
    monkeypatch.setattr(export, "_STATE_BYTES", 1)  # every state read alone
    paged = tmp_path / "paged.jsonl"
    db.export_data(paged)

    def records(path: Path) -> list[dict[str, Any]]:
        # All but the header's created_at, and the digests: PostgreSQL may return a state's
        # parts in another order for another batch, so key order (not content) can differ.
        return [{k: v for k, v in r.items() if k != "digest"} for r in lines(path)[1:]]

    assert records(paged) == records(whole)
    target.import_data(paged)
    assert dump(target) == dump(db)


def test_importing_the_same_file_twice_writes_nothing_the_second_time(
    filled: DatabaseClient, target: DatabaseClient, tmp_path: Path
) -> None:
    path = tmp_path / "e.jsonl"
    filled.export_data(path)
    target.import_data(path)
    before = raw_tables(target)
    again = target.import_data(path)
    assert raw_tables(target) == before  # not even a timestamp moved
    assert again["trajectories"] == {"created": 0, "updated": 0, "unchanged": 7}
    for table in ("steps", "agent_outputs", "environment_feedbacks", "metadata"):
        assert again[table]["created"] == 0 and again[table]["present"] > 0


def test_importing_into_the_source_database_itself_changes_nothing(filled: DatabaseClient, tmp_path: Path) -> None:
    filled.export_data(tmp_path / "e.jsonl")
    before = raw_tables(filled)
    assert filled.import_data(tmp_path / "e.jsonl")["trajectories"]["unchanged"] == 7
    assert raw_tables(filled) == before


def test_import_completes_a_partial_copy_adding_only_what_is_missing(
    filled: DatabaseClient, target: DatabaseClient, tmp_path: Path
) -> None:
    filled.export_data(tmp_path / "e.jsonl")
    wl = Workload(0)
    tid = "wl-0-0"
    target.save_trajectory({"id": tid, "task": filled.load_trajectory(tid)["task"]})
    target.save_step(wl.step_record(0, 0, tid), **{k: v for k, v in wl.checkpoint(0, 0, tid).items() if k != "step"})
    target.save_metadata(tid, "index", 0)
    counts = target.import_data(tmp_path / "e.jsonl")
    assert counts["trajectories"] == {"created": 6, "updated": 1, "unchanged": 0}
    assert counts["steps"] == {"created": 13, "present": 1}
    assert counts["metadata"] == {"created": 5, "present": 1}
    assert dump(target) == dump(filled)


@pytest.mark.parametrize(
    "change",
    ["trajectory key", "metadata value", "step", "agent output", "game state"],
)
def test_conflicting_stored_data_is_refused_and_nothing_of_that_trajectory_is_written(
    filled: DatabaseClient, target: DatabaseClient, tmp_path: Path, change: str
) -> None:
    filled.export_data(tmp_path / "e.jsonl")
    wl = Workload(0)
    tid = "wl-0-1"
    target.save_trajectory({"id": tid})
    if change == "trajectory key":
        target.save_trajectory({"id": tid, "task": "another task"})
    elif change == "metadata value":
        target.save_metadata(tid, "index", 1.0)  # 1.0 is not the exported 1
    elif change == "step":
        target.save_step({**wl.step_record(1, 3, tid), "reward": 99.0})
    elif change == "agent output":
        target.save_agent_output({"trajectory_id": tid, "step_number": 2, "code": "other()"})
    else:
        target.save_step(wl.step_record(1, 0, tid), game_state={"different": True})
    before = raw_tables(target)
    with pytest.raises(ConflictError, match="wl-0-1"):
        target.import_data(tmp_path / "e.jsonl")
    after = raw_tables(target)
    ours = {table: [row for row in rows if tid in row] for table, rows in after.items()}
    assert ours == {table: [row for row in rows if tid in row] for table, rows in before.items()}
    assert "wl-0-0" in trajectory_ids(target)  # trajectories before the conflicting one were imported


# -- cross-backend ----------------------------------------------------------------------------
def test_sqlite_to_postgresql_and_back_yields_identical_data(make_url: MakeUrl, tmp_path: Path) -> None:
    with (
        DatabaseClient(make_url("sqlite")) as sqlite_source,
        DatabaseClient(make_url("postgres")) as postgres,
        DatabaseClient(make_url("sqlite")) as sqlite_again,
    ):
        fill(sqlite_source, trajectories=4, steps=5)
        expected = dump(sqlite_source)
        sqlite_source.export_data(tmp_path / "from-sqlite.jsonl.zst")
        postgres.import_data(tmp_path / "from-sqlite.jsonl.zst")
        assert dump(postgres) == expected
        postgres.export_data(tmp_path / "from-postgres.jsonl")
        sqlite_again.import_data(tmp_path / "from-postgres.jsonl")
        assert dump(sqlite_again) == expected
        assert postgres.validate()["ok"] and sqlite_again.validate()["ok"]
        # Both exports carry the same records; only the header (backend, time) differs.
        body = [r for r in lines(tmp_path / "from-postgres.jsonl") if r["kind"] != "header"]
        with zstandard.ZstdDecompressor().stream_reader(open(tmp_path / "from-sqlite.jsonl.zst", "rb")) as reader:
            original = [orjson.loads(x) for x in reader.read().splitlines() if b'"kind":"header"' not in x]
        assert body == original


# -- filters and order ------------------------------------------------------------------------
def exported_ids(db: DatabaseClient, path: Path, **filters: Any) -> list[str]:
    db.export_data(path, **filters)
    return [r["trajectory"]["id"] for r in lines(path) if r["kind"] == "trajectory"]


def test_forks_come_after_their_parents_whatever_their_ids(filled: DatabaseClient, tmp_path: Path) -> None:
    order = exported_ids(filled, tmp_path / "e.jsonl")
    assert sorted(order) == trajectory_ids(filled)
    assert order.index("wl-0-2") < order.index("a-fork") < order.index("0-grandchild")


def test_filter_by_trajectory_ids(filled: DatabaseClient, tmp_path: Path) -> None:
    assert exported_ids(filled, tmp_path / "e.jsonl", trajectory_ids=["wl-0-1", "empty", "missing"]) == [
        "empty",
        "wl-0-1",
    ]
    header = lines(tmp_path / "e.jsonl")[0]
    assert header["filters"]["trajectory_ids"] == ["wl-0-1", "empty", "missing"]


def test_filter_by_task_and_agent(filled: DatabaseClient, tmp_path: Path) -> None:
    task = filled.load_trajectory("wl-0-1")["task"]
    by_task = exported_ids(filled, tmp_path / "t.jsonl", task=task)
    assert "wl-0-1" in by_task and all(filled.load_trajectory(t)["task"] == task for t in by_task)
    assert exported_ids(filled, tmp_path / "a.jsonl", agent_type="agent-1") == ["wl-0-1"]
    assert exported_ids(filled, tmp_path / "b.jsonl", agent_type="agent-0", task="no such task") == []


def test_filter_by_time_range_of_first_save(db: DatabaseClient, tmp_path: Path) -> None:
    db.save_trajectory({"id": "early"})
    time.sleep(0.02)
    middle = datetime.now(UTC)
    time.sleep(0.02)
    db.save_trajectory({"id": "late"})
    db.save_trajectory({"id": "early", "task": "updated later"})  # an update is not a first save
    assert exported_ids(db, tmp_path / "1.jsonl", since=middle) == ["late"]
    assert exported_ids(db, tmp_path / "2.jsonl", until=middle.isoformat()) == ["early"]
    assert exported_ids(db, tmp_path / "3.jsonl", since=middle.timestamp() - 60, until=middle) == ["early"]
    with pytest.raises(ValidationError, match="since"):
        db.export_data(tmp_path / "4.jsonl", since="yesterday")
    with pytest.raises(ValidationError, match="until"):
        db.export_data(tmp_path / "4.jsonl", until=datetime(2026, 1, 1))  # naive: ambiguous


def test_a_selected_fork_whose_parent_is_missing_in_the_target_is_not_imported(
    filled: DatabaseClient, target: DatabaseClient, tmp_path: Path
) -> None:
    filled.export_data(tmp_path / "fork.jsonl", trajectory_ids=["a-fork"])
    with pytest.raises(NotFoundError, match="wl-0-2"):
        target.import_data(tmp_path / "fork.jsonl")
    assert trajectory_ids(target) == []


# -- bad files --------------------------------------------------------------------------------
@pytest.fixture
def exported(filled: DatabaseClient, tmp_path: Path) -> list[dict[str, Any]]:
    filled.export_data(tmp_path / "e.jsonl")
    return lines(tmp_path / "e.jsonl")


def test_an_unknown_format_version_is_refused_before_anything_is_written(
    exported: list[dict[str, Any]], target: DatabaseClient, tmp_path: Path
) -> None:
    exported[0]["version"] = 2
    write_lines(tmp_path / "v2.jsonl", exported)
    with pytest.raises(SchemaVersionError, match="version 2"):
        target.import_data(tmp_path / "v2.jsonl")
    assert trajectory_ids(target) == []


def test_files_that_are_not_exports_are_refused(filled: DatabaseClient, target: DatabaseClient, tmp_path: Path) -> None:
    filled.export_data(tmp_path / "chat.jsonl", "chat")
    with pytest.raises(ValidationError, match="not an fle-db export"):
        target.import_data(tmp_path / "chat.jsonl")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ValidationError, match="empty"):
        target.import_data(tmp_path / "empty.jsonl")
    assert trajectory_ids(target) == []


def test_a_truncated_file_imports_complete_trajectories_only(
    filled: DatabaseClient, target: DatabaseClient, tmp_path: Path
) -> None:
    filled.export_data(tmp_path / "e.jsonl")
    data = (tmp_path / "e.jsonl").read_bytes()
    records = lines(tmp_path / "e.jsonl")
    # Cut in the middle of the second checkpoint of the third trajectory in the file.
    starts = [i for i, r in enumerate(records) if r["kind"] == "trajectory"]
    cut_line = starts[2] + 2
    offset = sum(len(x) + 1 for x in data.splitlines()[:cut_line]) + 100
    (tmp_path / "cut.jsonl").write_bytes(data[:offset])
    with pytest.raises(DataIntegrityError, match="truncated"):
        target.import_data(tmp_path / "cut.jsonl")
    imported = [records[i]["trajectory"]["id"] for i in starts[:2]]
    assert trajectory_ids(target) == sorted(imported)
    # Cut exactly at a line boundary inside a trajectory: still refused.
    (tmp_path / "cut2.jsonl").write_bytes(b"".join(x + b"\n" for x in data.splitlines()[: starts[2] + 2]))
    with pytest.raises(DataIntegrityError, match="truncated"):
        target.import_data(tmp_path / "cut2.jsonl")
    assert trajectory_ids(target) == sorted(imported)


def test_a_truncated_compressed_file_is_a_data_integrity_error(filled: DatabaseClient, tmp_path: Path) -> None:
    filled.export_data(tmp_path / "e.jsonl.zst")
    data = (tmp_path / "e.jsonl.zst").read_bytes()
    (tmp_path / "cut.jsonl.zst").write_bytes(data[: len(data) // 2])
    with DatabaseClient(f"sqlite:///{tmp_path / 'other.db'}") as other, pytest.raises(DataIntegrityError):
        other.import_data(tmp_path / "cut.jsonl.zst")


def test_a_tampered_record_is_refused_and_nothing_of_its_trajectory_is_written(
    exported: list[dict[str, Any]], target: DatabaseClient, tmp_path: Path
) -> None:
    victim = next(r for r in exported if r["kind"] == "checkpoint" and r["trajectory_id"] == "wl-0-1")
    victim["step"]["reward"] = 1000.0
    write_lines(tmp_path / "tampered.jsonl", exported)
    with pytest.raises(DataIntegrityError, match=r"'wl-0-1'.*digest"):
        target.import_data(tmp_path / "tampered.jsonl")
    assert "wl-0-1" not in trajectory_ids(target) and "wl-0-0" in trajectory_ids(target)
    # A line that no longer parses is named.
    raw = (tmp_path / "tampered.jsonl").read_bytes().splitlines()
    raw[3] = raw[3][:-5]
    (tmp_path / "garbled.jsonl").write_bytes(b"\n".join(raw) + b"\n")
    with pytest.raises(DataIntegrityError, match="line 4 is not valid JSON"):
        target.import_data(tmp_path / "garbled.jsonl")


def test_a_new_trajectory_whose_write_fails_midway_is_removed_again(
    exported: list[dict[str, Any]], target: DatabaseClient, tmp_path: Path
) -> None:
    # A sealed file whose metadata key is invalid: the trajectory and its steps are written
    # first, then save_metadata refuses the key; the import must leave nothing of it.
    header = next(r for r in exported if r["kind"] == "trajectory" and r["trajectory"]["id"] == "wl-0-0")
    header["metadata"]["bad key!"] = 1
    write_lines(tmp_path / "bad.jsonl", reseal(exported))
    with pytest.raises(ValidationError, match="metadata key"):
        target.import_data(tmp_path / "bad.jsonl")
    assert trajectory_ids(target) == ["bare", "empty"]  # those before it in the file stay imported
    assert target.get_statistics()["game_states"] == 0  # its states went with it
    assert target.validate()["ok"]


# -- files ------------------------------------------------------------------------------------
def test_export_files_are_owner_only_and_replace_the_target_atomically(filled: DatabaseClient, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "e.jsonl"
    filled.export_data(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    original = path.read_bytes()

    def fail(done: int, _bytes: int) -> None:
        if done == 3:
            raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        filled.export_data(path, progress=fail)
    assert path.read_bytes() == original  # the old export is untouched
    assert os.listdir(path.parent) == ["e.jsonl"]  # and no temporary file is left


def test_unknown_format_is_a_validation_error(filled: DatabaseClient, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="jsonl, chat, sft, preference, adp, parquet, hf"):
        filled.export_data(tmp_path / "e.csv", "csv")
    assert not (tmp_path / "e.csv").exists()


# -- chat -------------------------------------------------------------------------------------
def test_chat_export_has_one_conversation_per_trajectory_with_code_and_feedback_turns(
    filled: DatabaseClient, tmp_path: Path
) -> None:
    report = filled.export_data(tmp_path / "chat.jsonl", "chat")
    conversations = {c["metadata"]["trajectory_id"]: c for c in lines(tmp_path / "chat.jsonl")}
    # empty and 0-grandchild have no agent code at all; bare has an orphan output's code.
    assert set(conversations) == {"wl-0-0", "wl-0-1", "wl-0-2", "a-fork", "bare"}
    assert report["skipped"] == 2 and report["trajectories"] == 5
    chat = conversations["wl-0-1"]
    wl = Workload(0)
    assert chat["messages"][0] == {"role": "system", "content": "You play."}
    assert chat["messages"][1] == {"role": "user", "content": filled.load_trajectory("wl-0-1")["task"]}
    turns = chat["messages"][2:]
    assert [m["role"] for m in turns] == ["assistant", "user"] * 4
    for n in range(4):
        feedback = wl.environment_feedback(1, n)
        assert turns[2 * n]["content"] == wl.agent_output(1, n)["code"]
        expected = feedback["stdout"] + (f"\n\nError: {feedback['error']}" if feedback["error"] else "")
        assert turns[2 * n + 1]["content"] == expected
    assert chat["metadata"] == {
        "trajectory_id": "wl-0-1",
        "task": filled.load_trajectory("wl-0-1")["task"],
        "agent_type": "agent-1",
        "total_reward": 1.5,
        "success": False,
        "steps": 4,
    }
    assert conversations["a-fork"]["messages"][0] == {"role": "assistant", "content": "fork()"}
    assert conversations["a-fork"]["messages"][1]["role"] == "user"  # the observation, as JSON
    assert json.loads(conversations["a-fork"]["messages"][1]["content"]) == EXOTIC


# -- parquet ----------------------------------------------------------------------------------
def test_parquet_export_has_one_row_per_checkpoint_with_exact_json(filled: DatabaseClient, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    report = filled.export_data(tmp_path / "e.parquet", "parquet")
    assert stat.S_IMODE((tmp_path / "e.parquet").stat().st_mode) == 0o600
    rows = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert len(rows) == report["checkpoints"] + 2  # empty and 0-grandchild: one row each
    row = next(r for r in rows if r["trajectory_id"] == "wl-0-2" and r["step_number"] == 3)
    step = filled.load_steps("wl-0-2")[3]
    assert row["game_state_id"] == step["game_state_id"]
    assert row["game_state"].encode() == canon(filled.load_game_state(step["game_state_id"]))
    assert orjson.loads(row["step"]) == {k: v for k, v in step.items() if k != "game_state_id"}
    assert row["reward"] == step["reward"] and row["agent_type"] == "agent-0" and row["total_reward"] == 3.0
    assert orjson.loads(row["metadata"]) == filled.load_metadata("wl-0-2")
    empty = next(r for r in rows if r["trajectory_id"] == "empty")
    assert empty["step_number"] is None and empty["task"] == "nothing"


def test_parquet_without_pyarrow_names_the_extra(
    filled: DatabaseClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an environment without pyarrow sees
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'fle-db\[parquet\]'"):
        filled.export_data(tmp_path / "e.parquet", "parquet")
    assert not (tmp_path / "e.parquet").exists()


# -- memory ---------------------------------------------------------------------------------
def test_export_and_import_memory_does_not_grow_with_the_number_of_trajectories(
    backend: str, make_url: MakeUrl, tmp_path: Path
) -> None:
    """The transient peak (tracemalloc peak minus what stays allocated afterwards: the client's
    own caches, each bounded by its setting) is that of one trajectory, whatever the count."""
    transient: dict[str, list[int]] = {"export": [], "import": []}

    def measure(what: str, run: Callable[[], object]) -> None:
        gc.collect()
        tracemalloc.start()
        run()
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        transient[what].append(peak - current)

    for count in (2, 24):
        with DatabaseClient(make_url(backend)) as source, DatabaseClient(make_url(backend)) as sink:
            fill(source, trajectories=count, steps=6)
            path = tmp_path / f"{count}.jsonl"
            measure("export", lambda: source.export_data(path))  # noqa: B023 (called at once)
            measure("import", lambda: sink.import_data(path))  # noqa: B023
            assert path.stat().st_size > count * 6 * 40_000
    for what, (small, large) in transient.items():
        assert large < small * 1.5, f"{what}: transient peak grew from {small:,} to {large:,} bytes"


# -- properties -------------------------------------------------------------------------------
texts = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=20)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(observation=json_values, meta=json_values, state=st.dictionaries(texts, json_values, max_size=4))
def test_any_json_value_round_trips_exactly(
    db: DatabaseClient, target: DatabaseClient, tmp_path: Path, observation: Any, meta: Any, state: dict[str, Any]
) -> None:
    tid = f"p{time.time_ns()}"
    db.save_step({"trajectory_id": tid, "step_number": 0, "observation": observation}, game_state=state)
    db.save_metadata(tid, "m", meta)
    path = tmp_path / f"{tid}.jsonl"
    db.export_data(path, trajectory_ids=[tid])
    target.import_data(path)
    assert canon(target.load_steps(tid)) == canon(db.load_steps(tid))
    assert canon(target.load_metadata(tid)) == canon(db.load_metadata(tid))
    assert canon(target.load_game_state(target.load_steps(tid)[0]["game_state_id"])) == canon(state)


# -- CLI --------------------------------------------------------------------------------------
def test_cli_export_and_import_with_filters_and_json_output(
    db_url: str, backend: str, make_url: MakeUrl, tmp_path: Path
) -> None:
    with DatabaseClient(db_url) as source:
        fill(source)
    target_url = make_url(backend)
    path = tmp_path / "cli.jsonl.zst"
    runner = CliRunner()
    result = runner.invoke(
        main, ["--url", db_url, "--json", "export", str(path), "--agent", "agent-1", "--trajectory", "wl-0-1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["trajectories"] == 1
    for expected in ({"created": 1, "updated": 0, "unchanged": 0}, {"created": 0, "updated": 0, "unchanged": 1}):
        result = runner.invoke(main, ["--url", target_url, "import", str(path), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["trajectories"] == expected
    result = runner.invoke(main, ["--url", target_url, "import", str(path)])
    assert result.exit_code == 0 and "fle-db import" in result.stdout
    result = runner.invoke(main, ["--url", db_url, "export", str(tmp_path / "c.jsonl"), "--format", "chat"])
    assert result.exit_code == 0 and "fle-db export" in result.stdout
    result = runner.invoke(main, ["--url", target_url, "import", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 2 and result.stderr.strip().startswith("Error: not an fle-db export")
    assert "Traceback" not in result.output
