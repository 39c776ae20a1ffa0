"""Connections: pool limits and timeouts, SQLite WAL/busy timeout/BEGIN IMMEDIATE, release on close."""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from fle_db import ConnectionTimeoutError, DatabaseClient, Settings


def test_an_exhausted_pool_raises_a_timeout_error_after_connection_timeout(db_url: str) -> None:
    with DatabaseClient(db_url, max_connections=2, connection_timeout=1) as db:
        engine = db._backend.engine  # type: ignore[attr-defined]
        held = [engine.connect() for _ in range(2)]
        started = time.monotonic()
        with pytest.raises(ConnectionTimeoutError, match="max_connections=2"):
            db.load_steps("anything")
        waited = time.monotonic() - started
        assert 0.9 <= waited < 5
        for conn in held:
            conn.close()
        db.save_step({"trajectory_id": "t", "step_number": 0})  # usable again once connections return


def test_sqlite_connections_use_wal_full_sync_foreign_keys_busy_timeout_and_secure_delete(make_url) -> None:  # type: ignore[no-untyped-def]
    with DatabaseClient(make_url("sqlite"), connection_timeout=7) as db:
        with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 7000
            assert conn.execute(text("PRAGMA secure_delete")).scalar() == 1  # deleted rows are zeroed


def test_fast_durability_is_an_explicit_option_on_both_backends(db_url: str) -> None:
    with DatabaseClient(db_url, durability="fast") as db, db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        if db.settings.backend == "sqlite":
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        else:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "off"
    with DatabaseClient(db_url) as db, db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        if db.settings.backend == "postgres":
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"


def _writer(url: str, worker: int, steps: int, barrier, queue) -> None:  # type: ignore[no-untyped-def]
    try:
        with DatabaseClient(url, connection_timeout=60) as db:
            barrier.wait(timeout=60)
            for n in range(steps):
                db.save_step(
                    {"trajectory_id": f"w{worker}", "step_number": n, "action": "x" * 200},
                    game_state={"worker": worker, "n": n},
                )
                db.save_metadata("shared", f"w{worker}", n)
                db.save_trajectory({"id": "shared", f"last_{worker}": n})
        queue.put("ok")
    except BaseException as exc:
        queue.put(f"{type(exc).__name__}: {exc}")


def test_concurrent_writer_processes_wait_instead_of_failing(db_url: str, backend: str) -> None:
    """16 writer processes on one SQLite file, 32 on PostgreSQL: each writes its own trajectory
    and merges into a shared one; no error reaches a caller, nothing is lost or duplicated."""
    workers, steps = (16, 12) if backend == "sqlite" else (32, 12)
    DatabaseClient(db_url).close()  # migrate first: this test is about writers, not migrations
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db_url, w, steps, barrier, queue)) for w in range(workers)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert results == ["ok"] * workers
    with DatabaseClient(db_url) as db:
        for w in range(workers):
            assert [s["step_number"] for s in db.load_steps(f"w{w}")] == list(range(steps))
        assert db.load_metadata("shared") == {f"w{w}": steps - 1 for w in range(workers)}
        shared = db.load_trajectory("shared")
        assert all(shared[f"last_{w}"] == steps - 1 for w in range(workers)), "a merge was lost"


def _backend_count(url: str) -> int:
    database = Settings.resolve(url).url.database
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()
    return int(row[0]) if row else 0


def test_close_and_context_manager_release_every_connection(make_url) -> None:  # type: ignore[no-untyped-def]
    url = make_url("postgres")
    with DatabaseClient(url, max_connections=4) as db:
        for n in range(20):
            db.save_step({"trajectory_id": "t", "step_number": n})
        assert _backend_count(url) >= 1
    assert _backend_count(url) == 0
    db = DatabaseClient(url)
    db.load_steps("t")
    db.close()
    db.close()  # idempotent
    assert _backend_count(url) == 0


def test_postgres_connections_dropped_by_the_server_are_replaced(make_url) -> None:  # type: ignore[no-untyped-def]
    url = make_url("postgres")
    database = Settings.resolve(url).url.database
    with DatabaseClient(url, max_connections=2) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0})
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        assert len(db.load_steps("t")) == 1  # pre-ping replaced the dead connection


def test_sqlite_connections_keep_fle_db_transaction_control_after_reads(make_url) -> None:  # type: ignore[no-untyped-def]
    with DatabaseClient(make_url("sqlite"), max_connections=1) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0}, game_state={"a": 1})
        db.load_steps("t")
        db.load_latest_checkpoint("t")
        db.load_game_states([db.load_steps("t")[0]["game_state_id"]])
        with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
            # None = pysqlite's legacy implicit BEGINs stay off; fle-db emits BEGIN IMMEDIATE itself
            assert conn.connection.dbapi_connection.isolation_level is None


def test_a_forced_stdlib_sqlite_with_the_wal_reset_bug_is_warned_about_once_and_the_default_never(
    make_url, monkeypatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from fle_db.backends import sqlite as sqlite_backend

    monkeypatch.setattr(sqlite_backend, "_warned", False)
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 45, 0))
    caplog.set_level("WARNING", logger="fle_db")
    DatabaseClient(make_url("sqlite")).close()  # the bundled SQLite: nothing to warn about
    assert not [r for r in caplog.records if "WAL-reset bug" in r.getMessage()]
    for _ in range(2):
        with DatabaseClient(make_url("sqlite").replace("sqlite:", "sqlite+pysqlite:", 1)) as db:
            assert db.health_check()["checks"]["sqlite_version"]["status"] == "degraded"
    warnings = [r for r in caplog.records if "WAL-reset bug" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_no_write_method_waits_for_a_second_connection_with_max_connections_1(
    server: str, make_url: Callable[[str], str], tmp_path: Path
) -> None:
    """A write transaction never checks out a second connection: with one pooled connection it
    would wait on itself for ``connection_timeout`` (MySQL's first save_trajectory did)."""
    with DatabaseClient(make_url(server), max_connections=1, connection_timeout=2, retry_deadline=0) as db:
        nodes: list[int] = []
        writes: list[tuple[str, Callable[[], Any]]] = [
            ("save_trajectory", lambda: db.save_trajectory({"id": "t", "task": "x"})),
            (
                "save_step",
                lambda: db.save_step(
                    {"trajectory_id": "t", "step_number": 0, "action": "a"},
                    agent_output={"o": 1},
                    environment_feedback={"f": 1},
                    game_state={"s": [1, 2]},
                ),
            ),
            (
                "batch_save_steps",
                lambda: db.batch_save_steps([{"trajectory_id": "t", "step_number": 1, "action": "b"}]),
            ),
            (
                "append_step",
                lambda: nodes.append(
                    db.append_step("t", {"action": "c"}, node={"tree": "tr", "depth": 0, "value": 1.0})["node_id"]
                ),
            ),
            ("fork_trajectory", lambda: db.fork_trajectory("t", 1, "f")),
            ("save_game_state", lambda: db.save_game_state({"g": 1})),
            ("save_agent_output", lambda: db.save_agent_output({"trajectory_id": "t", "step_number": 1, "o": 2})),
            (
                "save_environment_feedback",
                lambda: db.save_environment_feedback({"trajectory_id": "t", "step_number": 1, "f": 2}),
            ),
            ("save_metadata", lambda: db.save_metadata("t", "k", {"v": 1})),
            ("update_search_stats", lambda: db.update_search_stats(node_id(), add_visits=1, add_value=0.5)),
            ("visit_search_node", lambda: db.visit_search_node(node_id())),
            ("export_data", lambda: db.export_data(tmp_path / "out.jsonl")),
            ("delete_trajectory", lambda: db.delete_trajectory("f")),
            ("import_data", lambda: db.import_data(tmp_path / "out.jsonl")),
            ("cleanup", lambda: db.cleanup(trajectory_ids=["t"])),
            ("optimize", lambda: db.optimize()),
        ]

        def node_id() -> int:
            return int(nodes[0])

        for name, write in writes:
            started = time.monotonic()
            write()
            assert time.monotonic() - started < 2, name
