"""Where the asyncio client's calls run: the event loop (over an asyncio driver) or a worker thread.

:class:`Runner` owns the synchronous :class:`~fle_db.DatabaseClient` objects the coroutines of
:class:`~fle_db.aio.AsyncDatabaseClient` delegate to, and runs each call in the right place:

- **native** (PostgreSQL): a ``DatabaseClient`` whose backend drives psycopg's async connections
  (:mod:`fle_db.backends.aio`); a call runs in ``greenlet_spawn`` on the event loop, awaiting at
  every round trip, so hundreds of concurrent calls share the pool without a thread each. The
  encoding between two round trips is the only work that holds the loop (a checkpoint's: ~1 ms).
- **worker** (SQLite, MySQL, custom backends; and, on PostgreSQL, the bulk and file work:
  exports, imports, backups, restores, validation, ``execute_query`` with its own login): a plain
  ``DatabaseClient`` on the runner's own threads. On PostgreSQL that client opens lazily, with at
  most two connections, and records into the native client's metrics.
- **inline** (SQLite's per-step calls, :data:`INLINE_CALLS`): on the event loop itself, one call
  per turn of the loop, while nothing runs on the worker thread. Handing a call to a thread and
  back wakes two threads, which on a VM costs a wake-up of an idle virtual CPU each way: measured
  on the 2-core VM, ~100 µs per call (10 µs with both threads pinned to one CPU), 10-25 % of a
  ~1 ms checkpoint save, where a lone save on the loop costs one turn (~20 µs). What could make
  an inline call wait is ruled out: another connection's write lock (the backend's
  ``without_lock_waits()``: the call stops before writing and runs again on the worker thread,
  which waits for the lock), a WAL checkpoint's writes holding up the commit's fsync (none
  while one is pending: see :mod:`fle_db.backends.sqlite_checkpoint`), and a slow disk (a call
  that waited over :data:`INLINE_BUDGET` sends the calls to the worker thread for
  :data:`INLINE_PAUSE`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Concatenate, ParamSpec, TypeVar

from ..backends import CheckpointStore
from ..client import DatabaseClient
from ..config import Settings
from ..errors import ClientClosedError, WouldWaitError
from ..ops.backup import BackupScheduler

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("fle_db")

#: Connections of the worker client beside a native one (bulk and file work is rare and serial).
WORKER_CONNECTIONS = 2

#: The calls of an agent's step, run on the event loop where the backend allows it (see the
#: module's docstring): each touches one step, so its time is bounded by a checkpoint's size.
INLINE_CALLS: frozenset[Callable[..., Any]] = frozenset(
    {
        DatabaseClient.save_step,
        DatabaseClient.append_step,
        DatabaseClient.load_step,
        DatabaseClient.load_checkpoint,
        DatabaseClient.load_latest_checkpoint,
        DatabaseClient.load_game_state,
        DatabaseClient.get_search_node,
        DatabaseClient.update_search_stats,
    }
)
#: Seconds an inline call may spend waiting (its wall time less the loop thread's CPU time: a
#: slow disk's fsync, not encoding or a garbage collection, which would stop the loop on any
#: thread); one that waits longer sends the client's calls to its worker thread for
#: :data:`INLINE_PAUSE` seconds.
INLINE_BUDGET = 0.010
INLINE_PAUSE = 10.0


class _NativeClient(DatabaseClient):
    """A ``DatabaseClient`` whose backend runs over an asyncio driver: use it only inside
    ``greenlet_spawn`` (construction included: it connects and migrates)."""

    def _open_backend(self) -> CheckpointStore:
        from ..backends.aio import open_native_backend

        return open_native_backend(self._settings)

    #: Taken by the encoding of each write, across a turn of the loop (see :meth:`_encode`).
    _encoding: asyncio.Lock
    #: Calls running on the loop (kept by :meth:`Runner.call`).
    running = 0

    def _encode(self, encode: Callable[[], T]) -> T:
        """Encode one write per turn of the event loop. Concurrent saves would otherwise encode
        back to back in one turn (200 FLE checkpoints: ~0.3 s) while every other task waits;
        queued on a lock that is held across a yield, each encoding (~1 ms) gets a turn of its
        own, and timers and I/O run between them. (On a worker thread instead, measured: the
        loop thread then waits for the GIL after every driver call, and stalls 100-200 ms.)"""
        from sqlalchemy.util import await_

        if not hasattr(self, "_encoding"):
            self._encoding = asyncio.Lock()
        if self.running <= 1 and not self._encoding.locked():
            return encode()  # alone: one encoding holds the loop ~1 ms, and a turn costs ~0.1 ms
        await_(self._encoding.acquire())
        try:
            await_(asyncio.sleep(0))
            return encode()
        finally:
            self._encoding.release()


class Runner:
    """The synchronous clients behind one asyncio client, opened on first use."""

    def __init__(self, url: str | None, options: Mapping[str, Any], settings: Settings) -> None:
        from ..backends.aio import has_native_backend, worker_threads

        self.settings = settings
        self.native = has_native_backend(settings)
        self._url, self._options = url, dict(options)
        workers = WORKER_CONNECTIONS if self.native else worker_threads(settings)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fle-db-aio")
        self._main: DatabaseClient | None = None
        self._worker: DatabaseClient | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        # Inline calls (see the module's docstring): whether the backend allows them, the lock
        # that gives each its own turn of the loop, the calls running on the worker threads,
        # and when inline calls resume after one ran over budget.
        self._inline = False
        self._turns = asyncio.Lock()
        self._on_threads = 0
        self._inline_from = 0.0

    async def main(self) -> DatabaseClient:
        """The client of the everyday calls (opened, and the schema migrated, on first use).

        Raises ClientClosedError after :meth:`close`, else what ``DatabaseClient()`` raises."""
        if self._main is not None and not self._closed:
            return self._main
        async with self._lock:
            self._refuse_if_closed()
            if self._main is None:
                if self.native:
                    from sqlalchemy.util import greenlet_spawn

                    # automated backups run beside it, on the worker client's thread and connections
                    options = {**self._options, "backup_interval": 0}
                    self._main = await greenlet_spawn(_NativeClient, self._url, **options)
                    if self.settings.backup_interval and not self.settings.read_only:
                        await self._open_worker()
                else:
                    self._main = await self._on_thread(DatabaseClient, self._url, **self._options)
                    self._inline = self._main._backend.runs_on_event_loop
            return self._main

    async def worker(self) -> DatabaseClient:
        """The client that runs on the worker threads (the main client unless it is native)."""
        main = await self.main()
        if not self.native:
            return main
        if self._worker is None:
            async with self._lock:
                self._refuse_if_closed()
                if self._worker is None:
                    await self._open_worker()
        assert self._worker is not None
        return self._worker

    def _refuse_if_closed(self) -> None:
        if self._closed:
            raise ClientClosedError(f"the client of {self.settings.safe_url()} is closed; open a new one")

    async def _open_worker(self) -> None:
        """The native client's worker twin (called under the lock, the main client open)."""
        assert self._main is not None
        options = {**self._options, "auto_migrate": False, "max_connections": WORKER_CONNECTIONS}
        worker = await self._on_thread(DatabaseClient, self._url, **options)
        worker._metrics = self._main._metrics  # one client's numbers, wherever a call ran
        self._worker = worker

    async def call(self, method: Callable[Concatenate[DatabaseClient, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``method`` of the main client: natively on the loop, else on a worker thread."""
        client = await self.main()
        if isinstance(client, _NativeClient):
            from sqlalchemy.util import greenlet_spawn

            client.running += 1
            try:
                result: T = await greenlet_spawn(functools.partial(method, client, *args, **kwargs))
            finally:
                client.running -= 1
            return result
        if self._inline and method in INLINE_CALLS and not self._on_threads and time.monotonic() >= self._inline_from:
            try:
                return await self._run_inline(functools.partial(method, client, *args, **kwargs), client)
            except WouldWaitError:
                pass  # it would have waited for a lock: it waits on the worker thread instead
        return await self._on_thread(method, client, *args, **kwargs)

    async def _run_inline(self, call: Callable[[], T], client: DatabaseClient) -> T:
        """``call`` on the loop, in a turn of its own. WouldWaitError (nothing done) if a call
        started on the worker thread meanwhile, or if it would wait for another connection."""
        async with self._turns:
            await asyncio.sleep(0)  # timers and I/O run between two inline calls
            if self._on_threads:
                raise WouldWaitError("a call is running on the worker thread")
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                with client._backend.without_lock_waits():
                    return call()
            finally:
                waited = (time.perf_counter() - started) - (time.thread_time() - cpu)
                if waited > INLINE_BUDGET:
                    self._inline_from = time.monotonic() + INLINE_PAUSE
                    log.info(
                        "an asyncio call of %s waited %.0f ms on the event loop: the calls run on the "
                        "worker thread for %g s",
                        self.settings.safe_url(),
                        waited * 1000,
                        INLINE_PAUSE,
                    )

    async def offload(
        self, method: Callable[Concatenate[DatabaseClient, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``method`` of the worker client, on a worker thread (bulk, file and CPU-heavy work)."""
        client = await self.worker()
        return await self._on_thread(method, client, *args, **kwargs)

    async def _on_thread(self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function`` on a worker thread; counted in ``_on_threads`` until it has returned
        there (a cancelled caller does not stop it)."""
        loop = asyncio.get_running_loop()
        self._on_threads += 1
        future = self._executor.submit(function, *args, **kwargs)
        future.add_done_callback(lambda _: self._thread_done(loop))
        return await asyncio.wrap_future(future)

    def _thread_done(self, loop: asyncio.AbstractEventLoop) -> None:
        """From the worker thread: count the call out on the loop (gone with a closed loop)."""
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._finished_on_thread)

    def _finished_on_thread(self) -> None:
        self._on_threads -= 1

    async def close(self) -> None:
        """Close both clients (waiting for an automated backup in progress); idempotent."""
        async with self._lock:
            if self._closed:
                return
            self._closed = True
            main, worker = self._main, self._worker
        if worker is not None:
            await self._on_thread(worker.close)
        if main is not None:
            if self.native:
                from sqlalchemy.util import greenlet_spawn

                await greenlet_spawn(main.close)
            else:
                await self._on_thread(main.close)
        self._executor.shutdown(wait=False)


class AsyncBackupScheduler:
    """:class:`~fle_db.ops.backup.BackupScheduler` for asyncio code: ``await run_once()``,
    ``start()`` (a daemon thread with its own connections, as the synchronous one), ``await
    stop()`` (waits for a backup in progress without blocking the loop)."""

    def __init__(self, scheduler: BackupScheduler) -> None:
        self.scheduler = scheduler

    @property
    def last_error(self) -> Exception | None:
        """The error of the last failed automated backup (None after a success)."""
        return self.scheduler.last_error

    async def run_once(self) -> dict[str, Any] | None:
        """Back up if one is due, then prune; the new manifest, or None if none was due."""
        return await asyncio.to_thread(self.scheduler.run_once)

    def start(self) -> AsyncBackupScheduler:
        """Run :meth:`run_once` every ``interval`` seconds in a daemon thread until :meth:`stop`."""
        self.scheduler.start()
        return self

    async def stop(self) -> None:
        """Stop the schedule, waiting for a backup in progress."""
        await asyncio.to_thread(self.scheduler.stop)
