"""The SQLite fle-db opens: the one apsw bundles (no WAL-reset bug), through the DB-API face
:mod:`fle_db.backends.sqlite_apsw`, which must read like the stdlib ``sqlite3`` to SQLAlchemy and
to fle-db's error handling."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fle_db import DatabaseClient
from fle_db.backends import sqlite_apsw, sqlite_checkpoint
from fle_db.backends.sqlite import wal_reset_bug_affects

FIXED = (3, 51, 3)


def test_every_sqlite_connection_fle_db_opens_uses_a_sqlite_without_the_wal_reset_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, tuple[int, ...]]] = []
    stdlib: list[Any] = []
    connect = sqlite_apsw.connect

    def spy(database: str, *args: Any, **kwargs: Any) -> sqlite_apsw.Connection:
        conn = connect(database, *args, **kwargs)
        version = conn.execute("SELECT sqlite_version()").fetchone()
        assert version is not None
        opened.append((database, tuple(int(part) for part in version[0].split("."))))
        return conn

    monkeypatch.setattr(sqlite_apsw, "connect", spy)
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: stdlib.append(a))
    live, copy, restored = tmp_path / "live.db", tmp_path / "copy.db", tmp_path / "restored.db"
    with DatabaseClient(f"sqlite:///{live}", backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, game_state={"tick": 0})
        backup_id = db.create_backup()
        db.copy_to(str(copy))
        db.restore_backup(backup_id, target=str(restored))
        db.restore_backup(backup_id)
        assert db.health_check()["checks"]["sqlite_version"]["status"] == "ok"
    with DatabaseClient(f"sqlite:///{copy}", read_only=True) as viewer:
        assert viewer.load_steps("t")[0]["action"] == "a"
    with DatabaseClient("sqlite://") as memory:
        memory.save_step({"trajectory_id": "m", "step_number": 0})
    files = {Path(name.removeprefix("file:").partition("?")[0]).name for name, _ in opened}
    assert {"live.db", "copy.db", "restored.db", ":memory:"} <= files
    assert any(".db.tmp" in name for name in files), files  # the backup file itself
    assert all(version >= FIXED and not wal_reset_bug_affects(version) for _, version in opened), opened
    assert stdlib == []


def _conn() -> sqlite_apsw.Connection:
    conn = sqlite_apsw.connect(":memory:")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
    conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES parent (id), v TEXT)")
    return conn


def test_a_query_without_rows_still_describes_its_columns_and_dml_counts_its_rows() -> None:
    conn = _conn()
    cursor = conn.execute("SELECT id, v FROM child WHERE id = ?", (1,))
    assert [column[0] for column in cursor.description or ()] == ["id", "v"]
    assert cursor.fetchall() == [] and cursor.rowcount == -1
    conn.execute("INSERT INTO parent (id) VALUES (7)")
    many = conn.executemany("INSERT INTO child (parent, v) VALUES (?, ?)", [(7, "a"), (7, "b"), (7, "c")])
    assert many.rowcount == 3 and many.description is None
    update = conn.execute("UPDATE child SET v = 'z' WHERE v <> ?", ("a",))
    assert update.rowcount == 2 and update.description is None
    assert conn.execute("UPDATE child SET v = 'y' WHERE id = -1").rowcount == 0
    insert = conn.execute("INSERT INTO child (parent, v) VALUES (:p, :v)", {"p": 7, "v": "d"})
    assert insert.lastrowid == 4
    rows = conn.execute("SELECT v FROM child ORDER BY id")
    assert rows.fetchone() == ("a",) and rows.fetchmany(2) == [("z",), ("z",)] and rows.fetchall() == [("d",)]


def test_one_execute_runs_one_statement_and_never_begins_a_transaction_by_itself() -> None:
    conn = _conn()
    with pytest.raises(sqlite_apsw.ProgrammingError, match="one statement at a time"):
        conn.execute("INSERT INTO parent (id) VALUES (1); INSERT INTO parent (id) VALUES (2)")
    assert conn.execute("SELECT id FROM parent").fetchall() == [(1,)]  # the second never ran
    conn.execute("INSERT INTO parent (id) VALUES (3)")
    assert not conn.in_transaction  # isolation_level=None: no implicit BEGIN
    conn.commit()
    conn.rollback()  # outside a transaction: nothing to do
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO parent (id) VALUES (4)")
    assert conn.in_transaction
    conn.rollback()
    assert conn.execute("SELECT count(*) FROM parent").fetchone() == (2,)


def _raises(action: Callable[[], object], kind: type[Exception], message: str) -> None:
    with pytest.raises(kind) as caught:
        action()
    assert message in str(caught.value), str(caught.value)
    assert isinstance(caught.value, sqlite_apsw.Error)


def test_errors_keep_sqlites_messages_under_the_db_api_classes_sqlite3_uses(tmp_path: Path) -> None:
    conn = _conn()
    _raises(
        lambda: conn.execute("INSERT INTO child (parent) VALUES (99)"),
        sqlite_apsw.IntegrityError,
        "FOREIGN KEY constraint failed",
    )
    _raises(lambda: conn.execute("SELECT * FROM missing"), sqlite_apsw.OperationalError, "no such table")
    _raises(lambda: conn.execute("SELECT ?", (1, 2)), sqlite_apsw.ProgrammingError, "bindings")
    path = tmp_path / "x.db"
    writer = sqlite_apsw.connect(str(path), timeout=0)
    writer.execute("CREATE TABLE t (a)")
    writer.execute("BEGIN IMMEDIATE")
    other = sqlite_apsw.connect(str(path), timeout=0)
    _raises(lambda: other.execute("BEGIN IMMEDIATE"), sqlite_apsw.OperationalError, "database is locked")
    writer.rollback()
    reader = sqlite_apsw.connect(f"file:{path}?mode=ro", uri=True)
    _raises(lambda: reader.execute("INSERT INTO t VALUES (1)"), sqlite_apsw.OperationalError, "readonly")
    _raises(
        lambda: sqlite_apsw.connect(f"file:{tmp_path / 'none.db'}?mode=rw", uri=True),
        sqlite_apsw.OperationalError,
        "unable to open database file",
    )
    (tmp_path / "junk.db").write_bytes(b"not a database" * 100)
    junk = sqlite_apsw.connect(str(tmp_path / "junk.db"))
    _raises(lambda: junk.execute("PRAGMA integrity_check"), sqlite_apsw.DatabaseError, "not a database")
    closed = sqlite_apsw.connect(":memory:")
    closed.close()
    _raises(lambda: closed.execute("SELECT 1"), sqlite_apsw.ProgrammingError, "Cannot operate on a closed database.")


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+pysqlite"])
def test_the_write_ahead_log_is_checkpointed_while_a_writer_saves_and_stays_bounded(
    scheme: str, tmp_path: Path
) -> None:
    """apsw: checkpoints run on the backend's own thread, off the commit path (the stdlib driver
    keeps SQLite's autocheckpoint); either way the log is copied into the database while the
    client writes, never grows past a few checkpoint thresholds, and the thread ends on close."""
    path = tmp_path / "fle.db"
    wal = tmp_path / "fle.db-wal"
    largest = 0
    with DatabaseClient(f"{scheme}:///{path}") as db:
        for n in range(300):  # ~40 KB of incompressible state each: ~12 MB through the log
            db.save_step({"trajectory_id": "t", "step_number": n}, game_state={"blob": os.urandom(30_000).hex()})
            largest = max(largest, wal.stat().st_size)
        assert path.stat().st_size > 8_000_000  # checkpointed while writing
        assert db.load_checkpoint("t", 299)["game_state"] is not None
    assert largest < 20_000_000, largest
    assert not [t for t in threading.enumerate() if t.name == "fle-db-wal-checkpoint"]


def test_a_save_succeeds_while_another_connection_is_checkpointing_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose log passed the self-checkpoint size checkpoints in its WAL hook; when
    another connection is checkpointing (many writer processes), SQLite answers SQLITE_BUSY, and
    that must not fail the save, which is durable already (64 writer processes failed so)."""
    monkeypatch.setattr(sqlite_checkpoint, "OWN_CHECKPOINT_PAGES", 1)  # every commit checkpoints
    path = tmp_path / "fle.db"
    stop = threading.Event()
    rounds = [0]

    def checkpoint_all_the_time() -> None:
        other = sqlite_apsw.connect(str(path), timeout=0)
        while not stop.is_set():
            other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            rounds[0] += 1
        other.close()

    with DatabaseClient(f"sqlite:///{path}") as db:
        db.save_trajectory({"id": "t"})
        thread = threading.Thread(target=checkpoint_all_the_time)
        thread.start()
        try:
            for n in range(150):
                db.save_step({"trajectory_id": "t", "step_number": n}, game_state={"blob": os.urandom(20_000).hex()})
        finally:
            stop.set()
            thread.join()
        assert [s["step_number"] for s in db.load_steps("t")] == list(range(150))
    assert rounds[0] > 150  # the other connection checkpointed throughout
