"""The systems ``benchmarks.run`` compares, each behind the same small interface.

Every system opens a fresh database (a SQLite file or a scratch PostgreSQL database) in its
constructor (untimed: schema creation; ``create=False`` opens one another instance prepared, as
the writer processes of ``benchmarks.concurrent`` do), then:

* :meth:`System.write` stores the checkpoints in the given order -- this is the timed write loop,
  serialisation included;
* :meth:`System.resume`, :meth:`System.load_trajectory` and :meth:`System.load_state` read back
  and **decode** (the timed reads), returning ``(step record, game state)`` pairs so the harness
  can check them against what was written.

Raw baselines store two tables ``steps(traj_id, step, data TEXT)`` and ``states(traj_id, step,
data TEXT)`` with primary key ``(traj_id, step)``; ``steps.data`` is the orjson of ``{step,
agent_output, environment_feedback}``, ``states.data`` the orjson of the game state (no row for a
checkpoint without one).
"""

from __future__ import annotations

import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from fle_db import DatabaseClient

from .common import Item, pg_synchronous_commit, sqlite_synchronous

#: ``(step record, game state)`` as read back and decoded (None: a checkpoint without a state).
Loaded = tuple[dict[str, Any], dict[str, Any] | None]

_RAW_COLUMNS = "(traj_id TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (traj_id, step))"
RAW_DDL = (f"CREATE TABLE steps {_RAW_COLUMNS}", f"CREATE TABLE states {_RAW_COLUMNS}")
#: How long a raw sqlite3 writer waits for another process's write lock.
BUSY_TIMEOUT_S = 120.0
#: The commit floor's one-row table (see :func:`commit_floor`).
FLOOR_DDL = "CREATE TABLE commit_floor (n BIGINT NOT NULL)"
#: LangGraph's own checkpoint format version: its graph loop (``langgraph/pregel/_checkpoint.py``)
#: writes v=4; the ``LATEST_VERSION = 2`` still exported by ``langgraph.checkpoint.base`` is
#: deprecated and would make PostgresSaver run a pending-sends migration query on every read.
LANGGRAPH_CHECKPOINT_V = 4


class System(ABC):
    """One storage system under test, writing to one fresh database."""

    @abstractmethod
    def durability(self) -> str:
        """How durable a returned write is, as actually configured (read back where possible)."""

    @abstractmethod
    def write(self, items: Sequence[Item]) -> None:
        """Store every checkpoint, in order (timed)."""

    @abstractmethod
    def resume(self, tid: str) -> Loaded:
        """The latest checkpoint of a trajectory, decoded."""

    @abstractmethod
    def load_trajectory(self, tid: str) -> list[Loaded]:
        """Every checkpoint of a trajectory in step order, decoded."""

    @abstractmethod
    def load_state(self, tid: str, step: int) -> dict[str, Any]:
        """The game state of one checkpoint, decoded."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (a SQLite writer checkpoints its WAL on the last close)."""


@dataclass(frozen=True)
class SystemSpec:
    """A system on one backend: ``factory(location)`` opens it on a SQLite path or PostgreSQL URL
    and creates its schema; ``factory(location, create=False)`` opens an already created one."""

    name: str
    backend: str
    factory: Callable[..., System]
    bulk: bool = False  # not one durable transaction per checkpoint


# -- fle-db ---------------------------------------------------------------------------------
class FleDb(System):
    """fle-db's public API: ``save_step`` per checkpoint (one transaction each)."""

    def __init__(self, location: str, *, create: bool = True) -> None:  # migrating is idempotent
        self._postgres = location.startswith("postgresql://")
        url = location if self._postgres else f"sqlite:///{location}"
        self._url = location
        self._db = DatabaseClient(url, durability="full")
        self._state_ids: dict[tuple[str, int], str] = {}

    def durability(self) -> str:
        if self._postgres:
            return f"txn/checkpoint, {pg_synchronous_commit(self._url)}"
        return f"txn/checkpoint, WAL, durability={self._db.settings.durability} (SQLite synchronous=FULL)"

    def write(self, items: Sequence[Item]) -> None:
        save = self._db.save_step
        ids = self._state_ids
        for item in items:
            saved = save(
                item.record,
                agent_output=item.agent_output,
                environment_feedback=item.environment_feedback,
                game_state=item.state,
            )
            ids[item.tid, item.step] = saved["game_state_id"]

    def resume(self, tid: str) -> Loaded:
        latest = self._db.load_latest_checkpoint(tid)
        if latest is None:
            raise LookupError(f"fle-db: no checkpoint for {tid}")
        return latest["step"], latest["game_state"]

    def load_trajectory(self, tid: str) -> list[Loaded]:
        steps = self._db.load_steps(tid)
        states = self._db.load_game_states(s["game_state_id"] for s in steps)
        return [(step, states[step["game_state_id"]]) for step in steps]

    def load_state(self, tid: str, step: int) -> dict[str, Any]:
        return self._db.load_game_state(self._state_ids[tid, step])

    def close(self) -> None:
        self._db.close()


class _RawTables(System):
    """Reads of the two raw TEXT tables, shared by the sqlite3 and psycopg baselines."""

    #: The driver's placeholder: the queries below are written with "?" (sqlite3) and psycopg
    #: subclasses set "%s".
    mark = "?"

    def _sql(self, query: str) -> str:
        return query if self.mark == "?" else query.replace("?", self.mark)

    def _reader(self) -> Any:
        """The connection to read with."""
        raise NotImplementedError

    def resume(self, tid: str) -> Loaded:
        conn, q = self._reader(), self._sql
        step = conn.execute(q("SELECT data FROM steps WHERE traj_id = ? ORDER BY step DESC LIMIT 1"), (tid,)).fetchone()
        state = conn.execute(
            q("SELECT data FROM states WHERE traj_id = ? ORDER BY step DESC LIMIT 1"), (tid,)
        ).fetchone()
        if step is None:
            raise LookupError(f"no checkpoint for {tid}")
        return orjson.loads(step[0])["step"], None if state is None else orjson.loads(state[0])

    def load_trajectory(self, tid: str) -> list[Loaded]:
        conn, q = self._reader(), self._sql
        steps = conn.execute(q("SELECT data FROM steps WHERE traj_id = ? ORDER BY step"), (tid,)).fetchall()
        states = conn.execute(q("SELECT data FROM states WHERE traj_id = ? ORDER BY step"), (tid,)).fetchall()
        return [(orjson.loads(s[0])["step"], orjson.loads(g[0])) for s, g in zip(steps, states, strict=True)]

    def load_state(self, tid: str, step: int) -> dict[str, Any]:
        conn, q = self._reader(), self._sql
        row = conn.execute(q("SELECT data FROM states WHERE traj_id = ? AND step = ?"), (tid, step)).fetchone()
        if row is None:
            raise LookupError(f"no state for {tid} step {step}")
        state: dict[str, Any] = orjson.loads(row[0])
        return state


# -- raw sqlite3 ----------------------------------------------------------------------------
class Sqlite3Txn(_RawTables):
    """stdlib sqlite3, WAL, ``synchronous=FULL``, ``BEGIN``/``COMMIT`` around each checkpoint's two rows."""

    def __init__(self, location: str, *, create: bool = True) -> None:
        # a long busy timeout and BEGIN IMMEDIATE: writer processes on one file queue for the lock
        self._conn = sqlite3.connect(location, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        for ddl in RAW_DDL if create else ():
            self._conn.execute(ddl)

    def durability(self) -> str:
        return f"txn/checkpoint, {sqlite_synchronous(self._conn)}"

    def write(self, items: Sequence[Item]) -> None:
        conn, dumps = self._conn, orjson.dumps
        for item in items:
            step_json = dumps(item.step_side()).decode()
            state_json = None if item.state is None else dumps(item.state).decode()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO steps (traj_id, step, data) VALUES (?, ?, ?)", (item.tid, item.step, step_json))
            if state_json is not None:
                conn.execute(
                    "INSERT INTO states (traj_id, step, data) VALUES (?, ?, ?)", (item.tid, item.step, state_json)
                )
            conn.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        return self._conn

    def close(self) -> None:
        self._conn.close()


# -- raw psycopg ----------------------------------------------------------------------------
class _PsycopgRaw(_RawTables):
    """Raw psycopg 3 on the two TEXT tables; reads in autocommit mode after the writes."""

    mark = "%s"

    def __init__(self, location: str, *, create: bool = True) -> None:
        self._url = location
        self._conn = psycopg.connect(location)
        for ddl in RAW_DDL if create else ():
            self._conn.execute(ddl)
        self._conn.commit()

    def _reader(self) -> psycopg.Connection[Any]:
        if not self._conn.autocommit:
            self._conn.commit()
            self._conn.autocommit = True
        return self._conn

    def close(self) -> None:
        self._conn.close()


class PsycopgTxn(_PsycopgRaw):
    """One transaction per checkpoint: both INSERTs and the COMMIT pipelined (one round trip)."""

    def durability(self) -> str:
        return f"txn/checkpoint, {pg_synchronous_commit(self._url)}"

    def write(self, items: Sequence[Item]) -> None:
        conn, dumps = self._conn, orjson.dumps
        with conn.pipeline(), conn.cursor() as cur:
            for item in items:
                step_json = dumps(item.step_side()).decode()
                cur.execute(
                    "INSERT INTO steps (traj_id, step, data) VALUES (%s, %s, %s)", (item.tid, item.step, step_json)
                )
                if item.state is not None:
                    state_json = dumps(item.state).decode()
                    cur.execute(
                        "INSERT INTO states (traj_id, step, data) VALUES (%s, %s, %s)",
                        (item.tid, item.step, state_json),
                    )
                conn.commit()  # in a pipeline: sends COMMIT, then waits for its result


class PsycopgCopy(_PsycopgRaw):
    """Bulk: ``COPY`` of all rows of both tables in ONE transaction -- not durable per checkpoint."""

    def durability(self) -> str:
        return f"1 txn for all (bulk), {pg_synchronous_commit(self._url)}"

    def write(self, items: Sequence[Item]) -> None:
        conn, dumps = self._conn, orjson.dumps
        with conn.cursor() as cur:
            with cur.copy("COPY steps (traj_id, step, data) FROM STDIN") as copy:
                for item in items:
                    copy.write_row((item.tid, item.step, dumps(item.step_side()).decode()))
            with cur.copy("COPY states (traj_id, step, data) FROM STDIN") as copy:
                for item in items:
                    copy.write_row((item.tid, item.step, dumps(item.state).decode()))
        conn.commit()


# -- LangGraph ------------------------------------------------------------------------------
class _LangGraph(System):
    """A LangGraph checkpoint saver: one ``put()`` per checkpoint, thread_id = trajectory id,
    each config chained to its parent, channel_values ``{"step": step side, "state": game
    state}`` and ``new_versions`` bumping both channels (peers.md's "2 channels" variant).
    ``put_writes()`` is not called (a real graph adds it), so this is an upper bound."""

    saver: Any

    def __init__(self) -> None:
        self._configs: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, dict[str, Any]] = {}
        self._checkpoint_ids: dict[tuple[str, int], str] = {}

    def write(self, items: Sequence[Item]) -> None:
        from langgraph.checkpoint.base.id import uuid6

        saver = self.saver
        for item in items:
            config = self._configs.get(item.tid) or {"configurable": {"thread_id": item.tid, "checkpoint_ns": ""}}
            previous = self._versions.get(item.tid, {})
            values: dict[str, Any] = {"step": item.step_side()}
            if item.state is not None:
                values["state"] = item.state
            versions = {channel: saver.get_next_version(previous.get(channel), None) for channel in values}
            checkpoint = {
                "v": LANGGRAPH_CHECKPOINT_V,
                "id": str(uuid6(clock_seq=item.step)),
                "ts": datetime.now(UTC).isoformat(),
                "channel_values": values,
                "channel_versions": versions,
                "versions_seen": {},
                "updated_channels": list(values),
            }
            metadata = {"source": "loop", "step": item.step, "parents": {}}
            self._configs[item.tid] = saver.put(config, checkpoint, metadata, versions)
            self._versions[item.tid] = versions
            self._checkpoint_ids[item.tid, item.step] = checkpoint["id"]

    @staticmethod
    def _loaded(checkpoint_tuple: Any) -> Loaded:
        values = checkpoint_tuple.checkpoint["channel_values"]
        return values["step"]["step"], values.get("state")

    def resume(self, tid: str) -> Loaded:
        found = self.saver.get_tuple({"configurable": {"thread_id": tid, "checkpoint_ns": ""}})
        if found is None:
            raise LookupError(f"LangGraph: no checkpoint for {tid}")
        return self._loaded(found)

    def load_trajectory(self, tid: str) -> list[Loaded]:
        newest_first = list(self.saver.list({"configurable": {"thread_id": tid, "checkpoint_ns": ""}}))
        return [self._loaded(found) for found in reversed(newest_first)]

    def load_state(self, tid: str, step: int) -> dict[str, Any]:
        config = {
            "configurable": {"thread_id": tid, "checkpoint_ns": "", "checkpoint_id": self._checkpoint_ids[tid, step]}
        }
        found = self.saver.get_tuple(config)
        if found is None:
            raise LookupError(f"LangGraph: no checkpoint for {tid} step {step}")
        state: dict[str, Any] = found.checkpoint["channel_values"]["state"]
        return state


class LangGraphSqlite(_LangGraph):
    """``SqliteSaver`` on its own ``sqlite3`` connection (WAL; ``synchronous`` left at its default)."""

    def __init__(self, location: str, *, create: bool = True) -> None:
        from langgraph.checkpoint.sqlite import SqliteSaver

        super().__init__()
        self._conn = sqlite3.connect(location, check_same_thread=False)
        self.saver = SqliteSaver(self._conn)
        if create:
            self.saver.setup()

    def durability(self) -> str:
        return f"commit/put, {sqlite_synchronous(self._conn)}"

    def close(self) -> None:
        self._conn.close()


class LangGraphPostgres(_LangGraph):
    """``PostgresSaver`` on a connection opened as its ``from_conn_string`` does (autocommit,
    ``prepare_threshold=0``, dict rows), after ``setup()``."""

    def __init__(self, location: str, *, create: bool = True) -> None:
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg.rows import dict_row

        super().__init__()
        self._url = location
        self._conn = psycopg.connect(location, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        self.saver = PostgresSaver(self._conn)
        if create:
            self.saver.setup()

    def durability(self) -> str:
        return f"autocommit pipeline/put, {pg_synchronous_commit(self._url)}"

    def close(self) -> None:
        self._conn.close()


# -- the commit floor -----------------------------------------------------------------------
def commit_floor(backend: str, location: str, commits: int) -> tuple[float, str]:
    """``(seconds per commit, durability)`` of the smallest durable write transaction, timed over
    ``commits`` of them in a fresh database: one autocommit ``UPDATE`` of a one-row, one-integer
    table (sqlite3 in WAL with ``synchronous=FULL``; psycopg with the server's synchronous commit),
    one statement, one round trip. An empty ``BEGIN; COMMIT`` is no floor: neither engine writes
    or syncs anything for a transaction that changed nothing."""
    if backend == "postgres":
        with psycopg.connect(location, autocommit=True) as conn:
            return _timed_updates(conn, commits), f"autocommit UPDATE, {pg_synchronous_commit(location)}"
    lite = sqlite3.connect(location, isolation_level=None)
    try:
        lite.execute("PRAGMA journal_mode=WAL")
        lite.execute("PRAGMA synchronous=FULL")
        return _timed_updates(lite, commits), f"autocommit UPDATE, {sqlite_synchronous(lite)}"
    finally:
        lite.close()


def _timed_updates(conn: Any, commits: int) -> float:
    """Seconds per autocommit ``UPDATE`` of :data:`FLOOR_DDL`'s one row on a sqlite3 or psycopg connection."""
    conn.execute(FLOOR_DDL)
    conn.execute("INSERT INTO commit_floor (n) VALUES (0)")
    start = time.perf_counter()
    for _ in range(commits):
        conn.execute("UPDATE commit_floor SET n = n + 1")
    return (time.perf_counter() - start) / commits


SPECS: tuple[SystemSpec, ...] = (
    SystemSpec("fle-db", "sqlite", FleDb),
    SystemSpec("sqlite3-txn", "sqlite", Sqlite3Txn),
    SystemSpec("langgraph-sqlite", "sqlite", LangGraphSqlite),
    SystemSpec("fle-db", "postgres", FleDb),
    SystemSpec("psycopg-txn", "postgres", PsycopgTxn),
    SystemSpec("psycopg-copy", "postgres", PsycopgCopy, bulk=True),
    SystemSpec("langgraph-postgres", "postgres", LangGraphPostgres),
)
SYSTEM_NAMES = tuple(dict.fromkeys(spec.name for spec in SPECS))
