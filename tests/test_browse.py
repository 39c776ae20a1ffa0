"""Browsing API: checkpoints load back as saved (``load_checkpoint``, ``load_latest_checkpoint``,
``load_steps(with_parts=True)``) and ``list_trajectories`` filters, orders and pages — on SQLite,
PostgreSQL and MySQL/MariaDB."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from conftest import ALL_BACKENDS
from sqlalchemy.exc import DBAPIError

from fle_db import DatabaseClient
from fle_db.errors import (
    BackendUnavailableError,
    ConfigurationError,
    NotFoundError,
    ReadOnlyError,
    SchemaVersionError,
    ValidationError,
)

ORDERS = ["id", "task", "agent_type", "steps", "total_reward", "success", "start_time", "end_time"]
ROW_KEYS = {"id", "task", "agent_type", "steps", "total_reward", "success", "start_time", "end_time",
            "parent_trajectory_id", "parent_step_number"}  # fmt: skip


@pytest.fixture(params=ALL_BACKENDS)
def any_db(request: pytest.FixtureRequest, make_url: Any) -> Iterator[DatabaseClient]:
    client = DatabaseClient(make_url(request.param))
    yield client
    client.close()


def _fill(db: DatabaseClient) -> None:
    """Nine trajectories: three tasks, two agents, some rewards and successes missing, a fork."""
    for i in range(9):
        record: dict[str, Any] = {"id": f"Run-{i}", "task": ["iron", "copper", "gears"][i % 3]}
        if i % 4:
            record["agent_type"] = ["gpt", "claude"][i % 2]
        if i % 3 != 2:
            record["total_reward"] = float(i % 5) - 1.5
        if i % 2:
            record["success"] = i % 3 == 1
        if i in (2, 5, 7):
            record["end_time"] = f"2026-01-0{9 - i}T00:00:00+00:00"
        db.save_trajectory(record)
        db.batch_save_steps({"trajectory_id": f"Run-{i}", "step_number": n, "reward": 1.0} for n in range(i % 4))
    db.fork_trajectory("Run-1", 0, "fork-of-1", task="iron")


def _walk(db: DatabaseClient, limit: int = 2, **kwargs: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = db.list_trajectories(limit=limit, cursor=cursor, **kwargs)
        assert len(page["trajectories"]) <= limit
        rows += page["trajectories"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows


def _expected_order(rows: list[dict[str, Any]], key: str, descending: bool) -> list[str]:
    present = [r for r in rows if r[key] is not None]
    absent = [r for r in rows if r[key] is None]
    present.sort(key=lambda r: (r[key], r["id"]), reverse=descending)
    absent.sort(key=lambda r: r["id"], reverse=descending)
    return [r["id"] for r in present + absent]


# -- checkpoints -----------------------------------------------------------------------------
def test_load_checkpoint_returns_each_part_as_save_step_was_given(any_db: DatabaseClient) -> None:
    db = any_db
    output, feedback, state = {"code": "print(1)", "tokens": 12}, {"stdout": "1", "stderr": ""}, {"tick": 7}
    db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, agent_output=output,
                 environment_feedback=feedback, game_state=state)  # fmt: skip
    db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b", "agent_output": output,
                  "environment_feedback": feedback, "game_state": state})  # fmt: skip
    db.save_step({"trajectory_id": "t", "step_number": 2, "action": "c"})
    for number in (0, 1):
        checkpoint = db.load_checkpoint("t", number)
        assert checkpoint["agent_output"] == output and checkpoint["environment_feedback"] == feedback
        assert checkpoint["game_state"] == state and checkpoint["step"]["action"] == "ab"[number]
    bare = db.load_checkpoint("t", 2)
    assert bare == {
        "step": {"trajectory_id": "t", "step_number": 2, "action": "c", "game_state_id": None},
        "agent_output": None, "environment_feedback": None, "game_state": None,
    }  # fmt: skip
    assert db.load_latest_checkpoint("t") == bare


def test_load_latest_checkpoint_gives_the_four_parts_of_the_highest_step(any_db: DatabaseClient) -> None:
    db = any_db
    for n in range(12):  # enough steps for records stored as deltas of a keyframe
        db.save_step({"trajectory_id": "t", "step_number": n, "action": "x" * 2000 + str(n)},
                     agent_output={"code": "y" * 3000 + str(n)}, environment_feedback={"stdout": "z" * 3000 + str(n)},
                     game_state={"tick": n, "big": "w" * 5000})  # fmt: skip
    latest = db.load_latest_checkpoint("t")
    assert latest is not None
    assert latest["agent_output"] == {"code": "y" * 3000 + "11"}
    assert latest["environment_feedback"] == {"stdout": "z" * 3000 + "11"}
    assert latest["game_state"] == {"tick": 11, "big": "w" * 5000}
    assert latest == db.load_checkpoint("t", 11)
    assert db.load_checkpoint("t", 5)["agent_output"] == {"code": "y" * 3000 + "5"}


def test_load_checkpoint_of_a_missing_step_is_not_found_and_bad_input_is_refused(any_db: DatabaseClient) -> None:
    any_db.save_step({"trajectory_id": "t", "step_number": 0})
    with pytest.raises(NotFoundError, match="step 1 of trajectory 't'"):
        any_db.load_checkpoint("t", 1)
    with pytest.raises(NotFoundError):
        any_db.load_checkpoint("nope", 0)
    for bad_id, bad_step in (("a b", 0), ("x'; DROP TABLE steps; --", 0), ("t", -1), ("t", True), ("t", "0")):
        with pytest.raises(ValidationError):
            any_db.load_checkpoint(bad_id, bad_step)  # type: ignore[arg-type]


def test_load_steps_with_parts_gives_outputs_and_feedbacks_as_entries(any_db: DatabaseClient) -> None:
    db = any_db
    db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a", "agent_output": {"code": "c0"}},
                 environment_feedback={"stdout": "o0"})  # fmt: skip
    db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"})
    plain, parts = db.load_steps("t"), db.load_steps("t", with_parts=True)
    assert "agent_output" not in plain[0]
    assert parts[0] == {**plain[0], "agent_output": {"code": "c0"}, "environment_feedback": {"stdout": "o0"}}
    assert parts[1] == plain[1]
    with pytest.raises(NotFoundError):
        db.load_steps("nope", with_parts=True)


# -- list_trajectories -------------------------------------------------------------------------
def test_list_rows_have_the_contract_keys_and_count_steps(any_db: DatabaseClient) -> None:
    _fill(any_db)
    rows = {r["id"]: r for r in _walk(any_db, limit=50)}
    assert len(rows) == 10 and all(set(r) == ROW_KEYS for r in rows.values())
    assert rows["Run-3"]["steps"] == 3 and rows["Run-4"]["steps"] == 0
    assert rows["fork-of-1"]["parent_trajectory_id"] == "Run-1" and rows["fork-of-1"]["parent_step_number"] == 0
    assert rows["Run-2"]["end_time"] == "2026-01-07T00:00:00+00:00" and rows["Run-1"]["end_time"] is None
    assert rows["Run-2"]["total_reward"] is None and rows["Run-1"]["total_reward"] == -0.5
    assert rows["Run-1"]["success"] is True and rows["Run-0"]["success"] is None
    assert datetime.fromisoformat(rows["Run-0"]["start_time"]).tzinfo is not None


@pytest.mark.parametrize("order_by", ORDERS)
def test_every_order_pages_through_every_row_once_nulls_last(any_db: DatabaseClient, order_by: str) -> None:
    _fill(any_db)
    everything = _walk(any_db, limit=50)
    for descending in (True, False):
        walked = _walk(any_db, limit=3, order_by=order_by, descending=descending)
        key = order_by if order_by != "start_time" else None
        ids = [r["id"] for r in walked]
        assert sorted(ids) == sorted(r["id"] for r in everything), (order_by, descending)
        if key is not None:
            assert ids == _expected_order(everything, key, descending), (order_by, descending)


def test_start_time_orders_by_when_each_trajectory_was_first_saved(any_db: DatabaseClient) -> None:
    for tid in ("b", "a", "c"):
        any_db.save_trajectory({"id": tid})
        time.sleep(0.002)
    assert [r["id"] for r in _walk(any_db, limit=1)] == ["c", "a", "b"]
    assert [r["id"] for r in _walk(any_db, limit=2, descending=False)] == ["b", "a", "c"]


def test_filters_combine(any_db: DatabaseClient) -> None:
    _fill(any_db)

    def ids(**kwargs: Any) -> set[str]:
        return {r["id"] for r in _walk(any_db, limit=4, **kwargs)}

    assert ids(task="iron") == {"Run-0", "Run-3", "Run-6", "fork-of-1"}
    assert ids(task="iron", agent_type="gpt") == {"Run-6"}
    assert ids(success=True) == {"Run-1", "Run-7"} and ids(success=False) == {"Run-3", "Run-5"}
    assert ids(id_contains="run-1") == {"Run-1"} and ids(id_contains="FORK") == {"fork-of-1"}
    assert ids(id_contains="_") == set()  # LIKE wildcards match themselves
    assert ids(parent_trajectory_id="Run-1") == {"fork-of-1"}
    assert ids(task="nothing") == set()
    now = time.time()
    assert len(ids(since=now - 3600, until=datetime.now(UTC).isoformat())) == 10
    assert ids(since=now + 3600) == set() and ids(until=now - 3600) == set()


def test_a_cursor_is_tamper_checked_and_bound_to_its_order_and_filters(any_db: DatabaseClient) -> None:
    _fill(any_db)
    cursor = any_db.list_trajectories(limit=2, task="iron")["next_cursor"]
    assert isinstance(cursor, str)
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-3] ^= 1
    altered = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    for bad in (altered, cursor[:-4], "not a cursor", "", "A" * 5000, 17):
        with pytest.raises(ValidationError, match="cursor"):
            any_db.list_trajectories(limit=2, task="iron", cursor=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="cursor"):
        any_db.list_trajectories(limit=2, task="copper", cursor=cursor)
    with pytest.raises(ValidationError, match="cursor"):
        any_db.list_trajectories(limit=2, task="iron", order_by="id", cursor=cursor)
    assert len(any_db.list_trajectories(limit=2, task="iron", cursor=cursor)["trajectories"]) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        {"order_by": "body"}, {"order_by": "id; DROP TABLE steps"}, {"limit": 0}, {"limit": 1001}, {"limit": True},
        {"limit": "5"}, {"success": "yes"}, {"descending": "no"}, {"task": ""}, {"task": 5}, {"agent_type": "x" * 201},
        {"id_contains": "%"}, {"id_contains": "a'b"}, {"parent_trajectory_id": "a b"}, {"since": "yesterday"},
        {"since": "2026-01-01T00:00:00"}, {"until": float("nan")},
    ],
)  # fmt: skip
def test_bad_arguments_are_validation_errors(any_db: DatabaseClient, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        any_db.list_trajectories(**kwargs)


def test_listing_and_checkpoints_are_counted_in_the_metrics(any_db: DatabaseClient) -> None:
    any_db.save_step({"trajectory_id": "t", "step_number": 0})
    any_db.list_trajectories()
    any_db.load_checkpoint("t", 0)
    operations = any_db.get_performance_metrics()["operations"]
    assert operations["list_trajectories"]["count"] == 1 and operations["load_checkpoint"]["count"] == 1


# -- read-only clients -------------------------------------------------------------------------
def test_a_read_only_client_reads_but_no_write_gets_through_its_connections(
    request: pytest.FixtureRequest, make_url: Any
) -> None:
    for backend in ALL_BACKENDS:
        url = make_url(backend)
        with DatabaseClient(url) as writer:
            writer.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, game_state={"x": 1})
        with DatabaseClient(url, read_only=True) as reader:
            assert reader.load_checkpoint("t", 0)["game_state"] == {"x": 1}
            assert reader.list_trajectories()["trajectories"][0]["id"] == "t"
            with pytest.raises(ReadOnlyError):
                reader.save_step({"trajectory_id": "t", "step_number": 1})
            with pytest.raises(ReadOnlyError):
                reader.save_trajectory({"id": "t", "task": "changed"})
            # Below the client's own refusal: the pooled connections themselves cannot write.
            engine = reader._backend.engine  # type: ignore[attr-defined]
            for statement in ("UPDATE trajectories SET task = 'changed'", "DELETE FROM steps",
                              "CREATE TABLE intruder (x INTEGER)"):  # fmt: skip
                with engine.connect() as conn, pytest.raises(DBAPIError, match=r"(?i)read.?only"):
                    conn.exec_driver_sql(statement)
                    conn.commit()
        with DatabaseClient(url) as check:
            assert check.load_trajectory("t").get("task") is None and len(check.load_steps("t")) == 1


def test_read_only_refuses_a_missing_sqlite_file_and_an_unmigrated_database(tmp_path: Any) -> None:
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        DatabaseClient(f"sqlite:///{tmp_path / 'absent.db'}", read_only=True)
    assert not (tmp_path / "absent.db").exists()
    (tmp_path / "empty.db").touch()
    with pytest.raises(SchemaVersionError, match="fle-db migrate"):
        DatabaseClient(f"sqlite:///{tmp_path / 'empty.db'}", read_only=True)
    with pytest.raises(ConfigurationError, match="read_only"):
        DatabaseClient("sqlite://", read_only="yes")
