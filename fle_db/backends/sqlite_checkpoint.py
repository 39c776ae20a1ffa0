"""WAL checkpoints of an SQLite database on a thread of their own, off the commit path.

SQLite's default (``wal_autocheckpoint`` = 1,000 pages) runs a checkpoint inside the COMMIT that
pushes the write-ahead log past 1,000 pages: that one commit copies ~4 MB of pages into the
database file and fsyncs it. Measured on the 2-core VM, FLE checkpoint saves of ~1.3 ms each: one
save in ~450 took 77 ms. On the asyncio client, whose SQLite saves run on the event loop, that
stalled the loop for as long.

So the connections fle-db's SQLite backend opens (apsw's) report each commit's log size through
a WAL hook, which replaces SQLite's autocheckpoint; past the same 1,000 pages, a daemon thread of
the backend runs ``PRAGMA wal_checkpoint(PASSIVE)`` on a connection of its own. A passive
checkpoint copies what no reader still needs and never waits for a lock; writers go on meanwhile
(WAL), and a later request catches up with what it could not copy. Checkpoints only move data
already durable in the log: a crash before one loses nothing. The stdlib driver
(``sqlite+pysqlite://``) has no WAL hook and keeps SQLite's autocheckpoint.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fle_db")

#: Log pages past which a checkpoint is requested (SQLite's own autocheckpoint threshold).
CHECKPOINT_PAGES = 1000
#: Log pages past which the committing connection checkpoints itself, as SQLite's autocheckpoint
#: does. The log restarts from its beginning only when a write begins after a checkpoint copied
#: all of it; a thread racing a busy writer may keep missing that moment, and the log would grow.
#: Measured with one writer saving 3,000 FLE checkpoints: the log stayed under 8 MB (~1,900 pages).
OWN_CHECKPOINT_PAGES = 4 * CHECKPOINT_PAGES
#: SQLite's result code the WAL hook returns.
SQLITE_OK = 0


class Checkpointer:
    """The WAL checkpoints of one backend's database. :meth:`wal_hook` goes on every connection
    that writes; :meth:`close` stops the thread (waiting for a checkpoint in progress)."""

    def __init__(self, connect: Callable[[], Any], location: str) -> None:
        """``connect`` opens the thread's own DB-API connection (without the hook)."""
        self._connect = connect
        self._location = location
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        #: From the commit that asks for a checkpoint until it is done. Meanwhile a commit's
        #: fsync may wait for the checkpoint's writes (measured: 54-77 ms, where ~0.2 ms is
        #: usual), so the asyncio client keeps its writes off the event loop (see the backend's
        #: ``without_lock_waits``).
        self.pending = False

    def wal_hook(self, connection: Any, database: str, pages: int) -> int:
        """apsw's WAL hook, called after each commit with the log's size in pages."""
        if pages >= OWN_CHECKPOINT_PAGES:
            try:
                connection.wal_checkpoint(database)  # passive
            except Exception as exc:
                # The commit is durable already: an error raised here would fail the call
                # that made it. SQLITE_BUSY means another connection is checkpointing (many
                # writer processes); that one copies the log, or the next commit tries again.
                busy = "locked" in str(exc) or "busy" in str(exc).lower()
                log.log(logging.DEBUG if busy else logging.WARNING,
                        "WAL checkpoint of %s after a commit skipped: %s", self._location, exc)  # fmt: skip
        elif pages >= CHECKPOINT_PAGES:
            self._request()
        return SQLITE_OK

    def _request(self) -> None:
        with self._lock:
            if self._closed:
                return
            self.pending = True
            if self._thread is None or self._pid != os.getpid():  # none yet, or forked since
                self._pid = os.getpid()
                self._wanted = threading.Event()
                self._thread = threading.Thread(target=self._run, name="fle-db-wal-checkpoint", daemon=True)
                self._thread.start()
        self._wanted.set()

    def _run(self) -> None:
        wanted = self._wanted
        connection = None
        try:
            while True:
                wanted.wait()
                wanted.clear()
                if self._closed:
                    return
                try:
                    if connection is None:
                        connection = self._connect()
                    # read to the end: a statement left open would hold a read snapshot,
                    # and the log could then never be reset
                    connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except Exception as exc:  # the next request tries again; the log only grows meanwhile
                    log.warning("WAL checkpoint of %s failed: %s", self._location, exc)
                finally:
                    self.pending = wanted.is_set()
        finally:
            if connection is not None:
                connection.close()

    def close(self) -> None:
        """Stop the thread (after the checkpoint in progress, if any); idempotent."""
        with self._lock:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
        self._wanted.set()
        if thread is not None:
            thread.join()
