"""PostgreSQL wake-ups for the live tail: ``NOTIFY`` after a commit, ``LISTEN`` in the tail.

A ``NOTIFY`` inside a write transaction would make PostgreSQL take a cluster-wide lock at its
commit (``PreCommit_Notify``), serializing every writer; so writers never notify inside their
transaction. Instead a client that committed pokes its :class:`Notifier`, whose thread sends
``pg_notify`` in a transaction of its own, at most once per :data:`NOTIFY_INTERVAL` per client:
the write path only sets an event. While no tail listens to the database (a look at
``pg_stat_activity`` every :data:`LISTENERS_CHECK_INTERVAL` s), nothing is sent. The
notification is a hint (the tail reads the commit log after every wake-up and polls anyway), so
one lost or coalesced costs latency, never a step.

Behind a pooler in transaction mode (PgBouncer) ``LISTEN`` cannot work (the session it registers
on is handed to other clients): the listener detects one as the prepared-statement guard does
(the backend pid the pooler announced is not the server's) and the tail polls instead.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from .base import TailListener

log = logging.getLogger(__name__)

#: The channel (one per database: channels are per database in PostgreSQL).
CHANNEL = "fle_db_steps"
#: A client notifies at most once per this many seconds (commits in between share one).
NOTIFY_INTERVAL = 0.25
#: A writing client looks this often whether any tail listens to its database (first one interval
#: after its first commit); while none does, it sends nothing (a tail polls until the next look).
LISTENERS_CHECK_INTERVAL = 5.0
#: ``application_name`` of a tail's listening session (find it in ``pg_stat_activity``).
LISTENER_NAME = "fle-db tail"
#: ``application_name`` of a writing client's notifying session.
NOTIFIER_NAME = "fle-db notify"
#: Seconds a listener pauses after losing its connection, before the tail's catch-up round.
RECONNECT_PAUSE = 0.1


class _OwnSession:
    """A psycopg session outside the client's pool, opened on demand under ``application_name``
    :attr:`name`: autocommit, and never preparing (it may go through a pooler). Not the pool's:
    a thread cannot drive the asyncio client's connections, which belong to its event loop."""

    name = ""

    def __init__(self, conninfo: str, connect_args: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._connect_args = connect_args
        self._conn: psycopg.Connection[Any] | None = None

    def _session(self) -> psycopg.Connection[Any]:
        """The open session, connected (and set up by :meth:`_opened`) if it is not."""
        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                prepare_threshold=None,
                **{**self._connect_args, "application_name": self.name},
            )
            try:
                self._opened(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _opened(self, conn: psycopg.Connection[Any]) -> None:
        """Set up a session just connected (nothing by default)."""

    def _close_session(self) -> None:
        """Close the session (the next :meth:`_session` opens a new one). Idempotent."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Notifier(_OwnSession):
    """Sends ``pg_notify(CHANNEL)`` from a daemon thread after :meth:`poke`, rate-limited, on a
    session of its own (:data:`NOTIFIER_NAME`), open only for a look or while a tail listens:
    a writer nobody tails holds no connection for it."""

    name = NOTIFIER_NAME

    def __init__(self, conninfo: str, connect_args: dict[str, Any]) -> None:
        super().__init__(conninfo, connect_args)
        self._poked = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poke(self) -> None:
        """A commit happened: notify soon (never blocks; starts the thread on first use)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(target=self._run, name="fle-db notify", daemon=True)
                    self._thread.start()
        self._poked.set()

    def _run(self) -> None:
        # The first look comes one interval after the first commit: a short-lived writer, or
        # one that nobody tails, opens no connection for it.
        listened, looked = False, time.monotonic()
        try:
            while True:
                self._poked.wait()
                if self._stopped:
                    return
                self._poked.clear()
                due = time.monotonic() - looked >= LISTENERS_CHECK_INTERVAL
                if due or listened:
                    try:
                        if due:
                            row = self._session().execute(_LISTENED, {"name": LISTENER_NAME}).fetchone()
                            listened, looked = bool(row and row[0]), time.monotonic()
                        if listened:
                            self._session().execute("SELECT pg_notify(%(channel)s, '')", {"channel": CHANNEL})
                        else:
                            self._close_session()
                    except Exception as exc:  # a hint: a failure only delays tails until they poll
                        log.debug("tail notification not sent: %s", exc)
                        self._close_session()
                threading.Event().wait(NOTIFY_INTERVAL)
        finally:
            self._close_session()

    def stop(self) -> None:
        """Stop the thread, which closes its session (before the client's engine is disposed).
        Idempotent."""
        self._stopped = True
        self._poked.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


#: Whether a tail listens to this database (its session's ``application_name``).
_LISTENED = (
    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = %(name)s)"
)


class Listener(_OwnSession, TailListener):
    """A ``LISTEN`` session of its own (:data:`LISTENER_NAME`), reconnected on the next wait
    after it is lost."""

    name = LISTENER_NAME

    def _opened(self, conn: psycopg.Connection[Any]) -> None:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        if pid is None or pid[0] != conn.info.backend_pid:
            raise _Pooled
        conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, seconds: float) -> None:
        """Until a notification or ``seconds``; a lost session is closed after a short pause."""
        try:
            for _ in self._session().notifies(timeout=seconds, stop_after=1):  # arrived together: one wake-up
                pass
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            # Notifications sent meanwhile are lost: return, so the tail catches up at once.
            log.debug("tail listener connection lost (%s); reconnecting on the next wait", exc)
            self.close()
            threading.Event().wait(min(seconds, RECONNECT_PAUSE))

    def close(self) -> None:
        """Close the session (a later wait opens a new one). Idempotent."""
        self._close_session()


class _Pooled(Exception):
    """The listener's connection goes through a pooler in transaction mode: LISTEN cannot work."""


def listener(conninfo: str, connect_args: dict[str, Any]) -> Listener | None:
    """A connected :class:`Listener`, or None behind a pooler (LISTEN unavailable: poll)."""
    candidate = Listener(conninfo, connect_args)
    try:
        candidate._session()
    except _Pooled:
        return None
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        log.debug("tail listener not connected yet (%s); polling until it is", exc)
    return candidate
