"""Statistics and performance metrics: accurate, cheap, on both backends."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from fle_db import DatabaseClient, NotFoundError
from fle_db.backends import postgres
from fle_db.backends.sqlite import wal_reset_bug_affects
from fle_db.workload import Workload


def _fill(db: DatabaseClient, trajectories: int = 3, steps: int = 8) -> None:
    work = Workload(1)
    for n in range(steps):
        for t in range(trajectories):
            cp = work.checkpoint(t, n, f"m{t}")
            db.save_step(cp["step"], agent_output=cp["agent_output"], game_state=cp["game_state"])


def test_statistics_count_what_was_stored_and_report_sizes(db: DatabaseClient) -> None:
    empty = db.get_statistics()
    assert (empty["trajectories"], empty["steps"], empty["oldest_step_at"]) == (0, 0, None)
    _fill(db)
    stats = db.get_statistics()
    assert stats["backend"] == db.settings.backend
    assert (stats["trajectories"], stats["steps"], stats["game_states"], stats["agent_outputs"]) == (3, 24, 24, 24)
    assert stats["environment_feedbacks"] == 0 and stats["exact_counts"] is True
    assert stats["size"] > 0
    assert {"steps", "blobs", "game_states", "trajectories"} <= set(stats["tables"]) or stats["tables"] == {}
    state_bytes = stats["game_state_bytes"]
    assert state_bytes["raw"] > 24 * 40_000 and 0 < state_bytes["stored"] < state_bytes["raw"]
    assert 0 < state_bytes["ratio"] < 1
    assert datetime.fromisoformat(stats["oldest_step_at"]) <= datetime.fromisoformat(stats["newest_step_at"])


def test_large_postgres_tables_are_counted_from_the_planner_estimate(make_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with DatabaseClient(make_url("postgres")) as db:
        db.batch_save_steps({"trajectory_id": "t", "step_number": n} for n in range(300))
        with db._backend.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("ANALYZE steps"))
        monkeypatch.setattr(postgres, "EXACT_COUNT_LIMIT", 100)
        stats = db.get_statistics()
        assert stats["exact_counts"] is False
        assert stats["steps"] == 300  # reltuples right after ANALYZE
        assert stats["trajectories"] == 1  # small tables are still counted exactly


def test_metrics_time_every_call_with_percentiles_pool_and_cache(db_url: str) -> None:
    with DatabaseClient(db_url, slow_operation_ms=0) as db:
        _fill(db, trajectories=1, steps=6)
        for _ in range(3):
            db.load_latest_checkpoint("m0")
        with pytest.raises(NotFoundError):
            db.load_trajectory("missing")
        metrics = db.get_performance_metrics()
    ops = metrics["operations"]
    assert ops["save_step"]["count"] == 6 and ops["save_step"]["errors"] == 0
    assert ops["load_latest_checkpoint"]["count"] == 3
    assert ops["load_trajectory"] == {**ops["load_trajectory"], "count": 1, "errors": 1}
    for op in ops.values():
        assert 0 < op["p50_ms"] <= op["p95_ms"] <= op["p99_ms"] <= op["max_ms"]
    assert metrics["avg_query_time"] > 0
    assert metrics["connection_count"] >= 1
    assert metrics["pool"]["in_use"] == 0 and metrics["pool"]["max"] >= 1
    assert metrics["cache"]["hits"] + metrics["cache"]["misses"] > 0
    assert len(metrics["slow_operations"]) == 10  # threshold 0: every call is slow
    assert metrics["slow_operations"][-1]["operation"] == "load_trajectory"


def test_a_healthy_database_passes_every_check_and_the_probe_leaves_no_trace(db: DatabaseClient) -> None:
    report = db.health_check()
    expected = {"connectivity", "schema", "write_probe", "pool"}
    expected |= {"disk", "wal", "sqlite_version"} if db.settings.backend == "sqlite" else {"connections", "replication"}
    assert expected <= set(report["checks"])
    for name, check in report["checks"].items():  # the SQLite fle-db bundles has no WAL-reset bug
        assert check["detail"]
        assert check["status"] == "ok", (name, check)
    assert report["status"] == "ok"
    assert db.get_statistics()["trajectories"] == 0


def test_an_unmigrated_database_reports_pending_schema_and_failing_writes(db_url: str) -> None:
    if db_url.startswith("sqlite:///"):  # an empty file: a missing one is reported as missing
        Path(db_url.removeprefix("sqlite:///")).touch()
    with DatabaseClient(db_url, auto_migrate=False) as db:
        report = db.health_check()
    assert report["status"] == "failing"
    assert report["checks"]["schema"]["status"] == "degraded" and "pending" in report["checks"]["schema"]["detail"]
    assert report["checks"]["write_probe"]["status"] == "failing"


def test_an_unreachable_server_reports_failing_connectivity() -> None:
    with DatabaseClient("postgresql://nobody@127.0.0.1:1/none", auto_migrate=False, connection_timeout=2) as db:
        report = db.health_check()
    assert report["status"] == "failing"
    assert report["checks"]["connectivity"]["status"] == "failing"


def test_low_disk_space_degrades_sqlite_health(make_url, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fle_db.backends import sqlite

    monkeypatch.setattr(sqlite, "DISK_DEGRADED_BYTES", 2**62)
    with DatabaseClient(make_url("sqlite")) as db:
        report = db.health_check()
    assert report["status"] == "degraded" and report["checks"]["disk"]["status"] == "degraded"


@pytest.mark.parametrize(
    ("version", "affected"),
    [((3, 40, 1), True), ((3, 51, 2), True), ((3, 51, 3), False), ((3, 52, 0), False), ((3, 50, 7), False),
     ((3, 50, 6), True), ((3, 44, 6), False), ((3, 44, 5), True), ((3, 6, 23), False)],
)  # fmt: skip
def test_the_wal_reset_bug_window_is_known_exactly(version: tuple[int, int, int], affected: bool) -> None:
    assert wal_reset_bug_affects(version) is affected
