"""``AsyncDatabaseClient``: the same API as ``DatabaseClient`` as coroutines, an event loop that keeps
turning while it works, typed errors, metrics, and lost connections that never fail a call.

The behaviour of every method through the asyncio client is tested by tests/test_client.py (every
test there runs against both clients); this file tests what is the asyncio client's own."""

from __future__ import annotations

import asyncio
import gc
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import psycopg
import pytest
from async_adapter import SyncAdapter
from sqlalchemy.util import greenlet_spawn
from test_lost_connections import WRITES, _kill_connections

from fle_db import (
    AsyncDatabaseClient,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    DatabaseClient,
    NotFoundError,
    ValidationError,
)
from fle_db.aio import AsyncBackupScheduler
from fle_db.workload import Workload

#: Sync methods whose asyncio twin returns the asyncio counterpart of what they return (a method
#: returning an iterator gets an async generator: ``Iterator[X]`` -> ``AsyncIterator[X]``).
ASYNC_RETURNS = {"backup_scheduler": "AsyncBackupScheduler", "tail": "AsyncIterator[dict[str, Any]]"}


def _public(cls: type) -> list[str]:
    return sorted(name for name in dir(cls) if not name.startswith("_"))


def test_every_public_method_has_an_async_twin_with_the_same_signature() -> None:
    """Generic over DatabaseClient's public names: a method added there fails here until its
    asyncio twin exists (a coroutine; an iterator would be an async iterator)."""
    assert _public(AsyncDatabaseClient) == _public(DatabaseClient)
    for name in _public(DatabaseClient):
        sync = inspect.getattr_static(DatabaseClient, name)
        twin = inspect.getattr_static(AsyncDatabaseClient, name)
        if isinstance(sync, property):
            assert isinstance(twin, property), name
            continue
        assert inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin), f"{name} is not async"
        expected = inspect.signature(getattr(DatabaseClient, name))
        got = inspect.signature(twin)
        assert list(got.parameters.values()) == list(expected.parameters.values()), name
        returns = ASYNC_RETURNS.get(name, expected.return_annotation)
        assert got.return_annotation == returns, name
        assert twin.__doc__, name


def _fle_checkpoints(count: int) -> list[dict[str, Any]]:
    workload = Workload(0)
    return [workload.checkpoint(i % 8, i // 8) for i in range(count)]


async def _save_while_ticking(db: AsyncDatabaseClient, checkpoints: list[dict[str, Any]]) -> float:
    """Save every checkpoint concurrently while a 10 ms ticker runs; the ticker's longest gap."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    try:
        results = await asyncio.gather(*(db.save_step(cp["step"], **{k: cp[k] for k in cp if k != "step"})
                                         for cp in checkpoints))  # fmt: skip
    finally:
        done.set()
        await ticking
    assert all(result["created"] for result in results)
    return max(gaps)


def test_the_event_loop_keeps_turning_during_200_concurrent_checkpoint_saves(db_url: str) -> None:
    """The loop's longest stall stays far below 100 ms (measured: ~15-30 ms on both backends).
    The test's own 200 checkpoints are frozen out of the garbage collector: a full collection
    of a heap holding them stops every thread for ~100 ms, whatever the client does."""
    checkpoints = _fle_checkpoints(200)

    async def main() -> float:
        async with AsyncDatabaseClient(db_url) as db:
            worst = await _save_while_ticking(db, checkpoints)
            assert len(await db.load_steps(checkpoints[0]["step"]["trajectory_id"])) == 25
            return worst

    gc.collect()
    gc.freeze()
    try:
        worst = asyncio.run(main())
    finally:
        gc.unfreeze()
    assert worst < 0.1, f"the event loop stood still for {worst * 1000:.0f} ms"


def test_calls_are_counted_in_the_performance_metrics_and_errors_are_typed(db_url: str) -> None:
    async def main() -> dict[str, Any]:
        async with AsyncDatabaseClient(db_url) as db:
            await db.save_step({"trajectory_id": "t", "step_number": 0}, game_state={"tick": 1})
            await db.load_checkpoint("t", 0)
            with pytest.raises(NotFoundError):
                await db.load_checkpoint("t", 1)
            return await db.get_performance_metrics()

    operations = asyncio.run(main())["operations"]
    assert operations["save_step"]["count"] == 1
    assert operations["load_checkpoint"] == {**operations["load_checkpoint"], "count": 2, "errors": 1}


@contextmanager
def _writers_locked_out(db_url: str) -> Iterator[None]:
    """Another connection holds what every save must wait for: SQLite's write lock; on
    PostgreSQL, the steps table locked against inserts."""
    if db_url.startswith("sqlite"):
        # apsw's SQLite, as fle-db's: two SQLite libraries in one process do not see each
        # other's POSIX locks.
        conn = apsw.Connection(db_url.removeprefix("sqlite:///"))
        conn.execute("BEGIN IMMEDIATE")
    else:
        conn = psycopg.connect(db_url, autocommit=True)
        conn.execute("BEGIN")
        conn.execute("LOCK TABLE steps IN EXCLUSIVE MODE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_a_save_waiting_for_another_connections_lock_leaves_the_event_loop_turning(db_url: str) -> None:
    """SQLite runs a lone save on the loop itself, but never a wait: a save that would wait for
    another connection's write lock waits on the worker thread, and lands once the lock is
    released, counted once and not as an error."""

    async def main() -> dict[str, Any]:
        async with AsyncDatabaseClient(db_url) as db:
            await db.save_step({"trajectory_id": "t", "step_number": 0}, game_state={"tick": 0})
            with _writers_locked_out(db_url):
                save = asyncio.create_task(
                    db.save_step({"trajectory_id": "t", "step_number": 1}, game_state={"tick": 1})
                )
                started = time.perf_counter()
                for _ in range(30):
                    await asyncio.sleep(0.01)
                assert time.perf_counter() - started < 1.0, "the event loop stood still"
                assert not save.done()
            assert (await asyncio.wait_for(save, 10))["created"]
            assert (await db.load_latest_checkpoint("t"))["game_state"] == {"tick": 1}
            return await db.get_performance_metrics()

    saves = asyncio.run(main())["operations"]["save_step"]
    assert (saves["count"], saves["errors"]) == (2, 0)


def test_concurrent_appends_get_distinct_gap_free_numbers_through_one_connection(db_url: str) -> None:
    """64 tasks append to one trajectory through a pool of one connection: each task's write
    transaction is its own (the in-transaction marker is per greenlet, not per thread)."""

    async def main() -> list[int]:
        async with AsyncDatabaseClient(db_url, max_connections=1) as db:
            await db.save_trajectory({"id": "t"})
            results = await asyncio.gather(*(db.append_step("t", {"action": f"a{i}"}) for i in range(64)))
            assert [s["step_number"] for s in await db.load_steps("t")] == list(range(64))
            return [r["step_number"] for r in results]

    assert sorted(asyncio.run(main())) == list(range(64))


def test_settings_are_checked_at_once_and_a_closed_client_refuses_calls(db_url: str) -> None:
    with pytest.raises(ConfigurationError):
        AsyncDatabaseClient(db_url, max_connections=0)

    async def main() -> None:
        db = AsyncDatabaseClient(db_url)
        assert await db.save_trajectory({"id": "t"}) == "t"  # opened by the first call
        await db.close()
        await db.close()  # idempotent
        with pytest.raises(ClientClosedError):
            await db.load_trajectory("t")
        never_opened = AsyncDatabaseClient(db_url)
        await never_opened.close()
        with pytest.raises(ClientClosedError):
            await never_opened.load_trajectory("t")

    asyncio.run(main())


def test_the_backup_scheduler_is_awaitable(db_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with AsyncDatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
            await db.save_step({"trajectory_id": "t", "step_number": 0})
            scheduler = await db.backup_scheduler(3600, 2)
            assert isinstance(scheduler, AsyncBackupScheduler)
            manifest = await scheduler.run_once()
            assert manifest is not None and await scheduler.run_once() is None  # not due again
            assert [b["id"] for b in await db.list_backups()] == [manifest["id"]]
            scheduler.start()
            await scheduler.stop()
            assert scheduler.last_error is None

    asyncio.run(main())


@pytest.mark.parametrize("method", ["save_step", "append_step", "batch_save_steps", "save_trajectory"])
def test_a_write_survives_a_connection_the_server_closed_while_idle(
    method: str, make_url: Callable[[str], str], tmp_path: Path
) -> None:
    """As tests/test_lost_connections.py, through the asyncio client on PostgreSQL (native)."""
    url = make_url("postgres")
    call, applied = WRITES[method]
    with SyncAdapter(url, max_connections=1, backup_dir=str(tmp_path / "bk"), backup_interval=0) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0}, node={"tree": "tree", "depth": 0})
        db.save_metadata("t", "k", 1)
        assert _kill_connections("postgres", url) >= 1
        call(db)  # type: ignore[arg-type]
        assert applied(db)  # type: ignore[arg-type]


def test_a_failed_one_trip_save_hands_its_connection_back_out_of_autocommit(db_url: str) -> None:
    """A save that failed inside its transaction (a conflicting step) leaves the pool's one
    connection usable. On PostgreSQL the one-trip save runs psycopg in autocommit (its own BEGIN
    and COMMIT in the pipeline) and switches it back in the same await: the connection is out of
    autocommit again, so the next multi-statement write is still one transaction."""

    async def main() -> None:
        async with AsyncDatabaseClient(db_url, max_connections=1) as db:
            await db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
            with pytest.raises(ConflictError):
                await db.save_step({"trajectory_id": "t", "step_number": 0, "action": "changed"})
            if db_url.startswith("postgres"):
                engine = (await db._runner.main())._backend.engine  # type: ignore[attr-defined]

                def autocommit() -> bool:
                    with engine.connect() as conn:
                        return bool(conn.connection.driver_connection.autocommit)

                assert await greenlet_spawn(autocommit) is False
            await db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"})
            assert [s["action"] for s in await db.load_steps("t")] == ["a", "b"]

    asyncio.run(main())


def test_async_postgres_awaits_no_commit_or_rollback_on_a_connection_with_no_transaction_open(
    make_url: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-trip save sends its own BEGIN and COMMIT; SQLAlchemy's commit after it and the
    pool's rollback on return find psycopg idle and are skipped (each was an await sending
    nothing). A write that leaves its transaction to SQLAlchemy still commits, a failed save
    still rolls back, and what was saved is visible to another client."""
    url = make_url("postgres")
    awaited: list[str] = []
    for name in ("commit", "rollback"):
        original = getattr(psycopg.AsyncConnection, name)

        async def spy(self: psycopg.AsyncConnection, _name: str = name, _original: Any = original) -> None:
            awaited.append(_name)
            await _original(self)

        monkeypatch.setattr(psycopg.AsyncConnection, name, spy)

    async def main() -> None:
        async with AsyncDatabaseClient(url, max_connections=1) as db:
            await db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
            awaited.clear()
            for n in range(1, 6):
                await db.save_step({"trajectory_id": "t", "step_number": n, "action": f"a{n}"}, game_state={"n": n})
            assert awaited == []
            await db.save_trajectory({"id": "u", "task": "k"})
            assert "commit" in awaited
            awaited.clear()
            with pytest.raises(ConflictError):
                await db.save_step({"trajectory_id": "t", "step_number": 0, "action": "changed"})
            assert "rollback" in awaited
            await db.save_step({"trajectory_id": "t", "step_number": 6, "action": "a6"})

    asyncio.run(main())
    with DatabaseClient(url) as sync:
        assert [s["action"] for s in sync.load_steps("t")] == ["a", "a1", "a2", "a3", "a4", "a5", "a6"]
        assert sync.load_trajectory("u")["task"] == "k"


def test_a_cancelled_call_leaves_whole_checkpoints_or_nothing_and_no_connection_behind(db_url: str) -> None:
    checkpoints = _fle_checkpoints(24)

    async def main() -> None:
        async with AsyncDatabaseClient(db_url, max_connections=4) as db:
            tasks = [asyncio.create_task(db.save_step(cp["step"], **{k: cp[k] for k in cp if k != "step"}))
                     for cp in checkpoints]  # fmt: skip
            await asyncio.sleep(0.02)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.2)  # SQLite: a save already on the worker thread finishes there
            for cp in checkpoints:
                step = cp["step"]
                try:
                    stored = await db.load_checkpoint(step["trajectory_id"], step["step_number"])
                except NotFoundError:
                    continue
                assert stored["game_state"] == cp["game_state"] and stored["agent_output"] is not None
            assert (await db.get_performance_metrics())["pool"]["in_use"] == 0
            again = checkpoints[0]
            await db.save_step(again["step"], **{k: again[k] for k in again if k != "step"})

    asyncio.run(main())


def test_the_async_tail_yields_steps_committed_after_it_started_and_resumes_from_a_cursor(db_url: str) -> None:
    async def main() -> None:
        async with AsyncDatabaseClient(db_url) as db:
            await db.save_step({"trajectory_id": "before", "step_number": 0})
            seen: list[tuple[str, int]] = []
            cursor = None

            async def follow() -> None:
                nonlocal cursor
                async for item in db.tail(timeout=5, poll_interval=0.05):
                    seen.append((item["trajectory_id"], item["step_number"]))
                    cursor = item["cursor"]
                    if len(seen) == 2:
                        return

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.3)
            for n in range(3):
                await db.save_step({"trajectory_id": "after", "step_number": n})
            await asyncio.wait_for(task, 10)
            assert seen == [("after", 0), ("after", 1)]
            rest = [(i["trajectory_id"], i["step_number"]) async for i in db.tail(cursor=cursor, timeout=0.5)]
            assert rest == [("after", 2)]
            with pytest.raises(ValidationError):
                async for _ in db.tail(cursor="not a cursor"):
                    pass

    asyncio.run(main())
