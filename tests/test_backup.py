"""Backups, restores, point-in-time recovery and copies: exact, verified, on every backend."""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ALL_BACKENDS
from sqlalchemy import create_engine, text

from fle_db import (
    ConfigurationError,
    ConflictError,
    DatabaseClient,
    DataIntegrityError,
    NotFoundError,
    SchemaVersionError,
    Settings,
    ValidationError,
)
from fle_db import migrations as fle_migrations

Dump = dict[str, Any]


TREES = ("w0", "w1", "w2")


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Point-in-time history, snapshots, restores and copies run on MySQL/MariaDB too."""
    return str(request.param)


def dump(db: DatabaseClient, ids: set[str]) -> Dump:
    """Everything the public API returns for the trajectories ``ids`` (absent ones included) and
    the search trees of the writers."""
    out: Dump = {f"tree {tree}": db.get_search_nodes(tree, order="recent") for tree in TREES}
    for tid in sorted(ids):
        try:
            trajectory = db.load_trajectory(tid)
        except NotFoundError:
            out[tid] = None
            continue
        steps = db.load_steps(tid)
        states = db.load_game_states([s["game_state_id"] for s in steps if s.get("game_state_id")])
        out[tid] = {
            "trajectory": trajectory,
            "steps": steps,
            "states": states,
            "outputs": db.load_agent_outputs(tid),
            "feedbacks": db.load_environment_feedbacks(tid),
            "metadata": db.load_metadata(tid),
        }
    return out


class _Gate:
    """Writers pass one at a time through :meth:`write` (shared); :meth:`still` waits until no
    write is in flight and blocks new ones: a snapshot taken inside is between commits."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writing = 0
        self._closed = False

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._closed)
            self._writing += 1
        try:
            yield
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    @contextmanager
    def still(self) -> Iterator[None]:
        with self._cond:
            self._closed = True
            self._cond.wait_for(lambda: self._writing == 0)
        try:
            yield
        finally:
            with self._cond:
                self._closed = False
                self._cond.notify_all()


def _writer(url: str, name: str, gate: _Gate, stop: threading.Event, ids: set[str], seed: int) -> None:
    """Random saves, merges, metadata updates, deletes and cleanups of this writer's trajectories."""
    rng = random.Random(seed)
    mine: dict[str, int] = {}
    nodes: list[int] = []
    with DatabaseClient(url, backup_interval=0) as db:
        while not stop.is_set():
            roll = rng.random()
            with gate.write():
                if not mine or roll < 0.15:
                    tid = f"{name}-{len(ids)}-{rng.randrange(10**6)}"
                    ids.add(tid)
                    db.save_trajectory({"id": tid, "task": "iron", "agent_type": name})
                    mine[tid] = 0
                    continue
                tid = rng.choice(sorted(mine))
                if roll < 0.6:
                    n = mine[tid]
                    db.save_step(
                        {"trajectory_id": tid, "step_number": n, "action": f"step {n}", "reward": n / 3},
                        agent_output={"code": f"craft({n})"},
                        environment_feedback={"stdout": "ok" * n},
                        game_state={"tick": n, "inventory": {"iron": n}, "map": ["x" * 200] * (n % 5)},
                    )
                    mine[tid] = n + 1
                elif roll < 0.66:
                    appended = db.append_step(
                        f"{name}-tree", {"action": "search"}, node={"tree": name, "depth": 1, "value": rng.random()}
                    )
                    ids.add(f"{name}-tree")
                    nodes.append(appended["node_id"])
                elif roll < 0.7 and nodes:
                    db.update_search_stats(rng.choice(nodes), add_visits=1, add_value=rng.random())
                elif roll < 0.75:
                    db.save_metadata(tid, "note", {"value": rng.random()})
                elif roll < 0.85:
                    db.save_trajectory({"id": tid, "total_reward": rng.random(), "success": roll < 0.8})
                elif roll < 0.93:
                    db.delete_trajectory(tid)
                    del mine[tid]
                else:
                    db.cleanup(trajectory_ids=[tid])
                    del mine[tid]


def _instant(gate: _Gate, db: DatabaseClient, ids: set[str]) -> tuple[datetime, Dump]:
    with gate.still():
        time.sleep(0.003)  # commit instants are microseconds: stay clear of the last one
        at = datetime.now(UTC)
        time.sleep(0.003)
        return at, dump(db, set(ids))


def _new_sqlite(tmp_path: Path, name: str) -> str:
    return str(tmp_path / f"{name}.db")


def test_restore_to_any_instant_equals_the_snapshot_taken_then_with_concurrent_writers(
    db_url: str, tmp_path: Path, make_url: Callable[[str], str]
) -> None:
    gate, stop, ids = _Gate(), threading.Event(), set[str]()
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        writers = [
            threading.Thread(target=_writer, args=(db_url, f"w{i}", gate, stop, ids, i), daemon=True) for i in range(3)
        ]
        for w in writers:
            w.start()
        instants = []
        for _ in range(8):
            time.sleep(0.15)
            instants.append(_instant(gate, db, ids))
        stop.set()
        for w in writers:
            w.join(timeout=60)
        final = _instant(gate, db, ids)
        everything = set(ids)
        assert any(d is None for d in final[1].values()), "the workload deleted nothing"
        assert len({orjson.dumps(d, option=orjson.OPT_SORT_KEYS) for _, d in instants}) >= 6

        # Into new SQLite files: every instant, exactly.
        for i, (at, snapshot) in enumerate(instants):
            target = _new_sqlite(tmp_path, f"at{i}")
            report = db.restore_to(at, target=target)
            with DatabaseClient(f"sqlite:///{target}", backup_interval=0) as copy:
                assert dump(copy, everything) == {**dict.fromkeys(everything), **snapshot}, f"instant {i}"
                assert copy.validate()["ok"]
            assert report["commit"]["committed_at"] <= at.isoformat()
        # Into an empty database of the other backend too (cross-backend).
        at, snapshot = instants[4]
        other = make_url("postgres" if db_url.startswith("sqlite") else "sqlite")
        db.restore_to(at.timestamp(), target=other)  # epoch seconds
        with DatabaseClient(other, backup_interval=0) as copy:
            assert dump(copy, everything) == {**dict.fromkeys(everything), **snapshot}

        # In place: back to instant 3, then undo that by going to the instant before it.
        at3, snap3 = instants[3]
        report = db.restore_to(at3.isoformat())
        assert report["safety_backup"] in {b["id"] for b in db.list_backups()}
        assert dump(db, everything) == {**dict.fromkeys(everything), **snap3}
        time.sleep(0.003)
        db.restore_to(final[0])
        assert dump(db, everything) == {**dict.fromkeys(everything), **final[1]}
        assert db.validate()["ok"]


def test_times_outside_the_recovery_window_raise_clear_errors(db: DatabaseClient) -> None:
    window = db.recovery_window()
    start = datetime.fromisoformat(window["from"])
    with pytest.raises(ValidationError, match="before the recovery window"):
        db.restore_to(start - timedelta(seconds=1), target="/nonexistent-never-written.db")
    with pytest.raises(ValidationError, match="in the future"):
        db.restore_to(datetime.now(UTC) + timedelta(hours=1))
    with pytest.raises(ValidationError, match="no time zone"):
        db.restore_to(datetime.now())  # naive on purpose
    with pytest.raises(ValidationError, match="ISO 8601"):
        db.restore_to("yesterday")


def test_instants_given_as_datetime_iso_string_and_epoch_seconds_agree(db: DatabaseClient, tmp_path: Path) -> None:
    db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
    time.sleep(0.002)
    at = datetime.now(UTC)
    time.sleep(0.002)
    db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"})
    points = {
        db.restore_to(value, target=_new_sqlite(tmp_path, name))["commit"]["seq"]
        for name, value in (("dt", at), ("iso", at.isoformat().replace("+00:00", "Z")), ("epoch", at.timestamp()))
    }
    assert len(points) == 1


def test_pruning_history_moves_the_window_and_keeps_later_instants_exact(db_url: str, tmp_path: Path) -> None:
    with DatabaseClient(db_url, pitr_retention=0, backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        db.save_metadata("t", "k", 1)
        time.sleep(0.002)
        early = datetime.now(UTC)
        db.save_metadata("t", "k", 2)
        db.optimize()  # prunes history older than pitr_retention (0 s)
        window = db.recovery_window()
        assert datetime.fromisoformat(window["from"]) > early
        with pytest.raises(ValidationError, match="before the recovery window"):
            db.restore_to(early, target=_new_sqlite(tmp_path, "early"))
        db.delete_trajectory("t")
        with pytest.raises(NotFoundError):
            db.load_trajectory("t")
        db.restore_to(datetime.fromisoformat(window["to"]))  # the last commit before the delete
        assert db.load_metadata("t") == {"k": 2}


# -- backups -------------------------------------------------------------------------------
def test_backup_is_consistent_while_a_writer_keeps_writing(db_url: str, tmp_path: Path) -> None:
    stop = threading.Event()

    def write() -> None:
        with DatabaseClient(db_url, backup_interval=0) as w:
            n = 1
            while not stop.is_set():
                w.save_step(
                    {"trajectory_id": "busy", "step_number": n, "action": "x"}, game_state={"tick": n, "pad": "p" * 500}
                )
                w.save_metadata("busy", "last", n)
                n += 1

    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "busy", "step_number": 0, "action": "x"})
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        time.sleep(0.2)
        backup_id = db.create_backup()
        stop.set()
        thread.join(timeout=30)
        info = next(b for b in db.list_backups() if b["id"] == backup_id)
        # The backup equals the database as committed at the backup's commit, and is whole.
        at = datetime.fromisoformat(info["commit"]["committed_at"])
        db.restore_to(at, target=_new_sqlite(tmp_path, "pitr"))
        db.restore_backup(backup_id, target=_new_sqlite(tmp_path, "restored"))
        with (
            DatabaseClient(f"sqlite:///{tmp_path / 'pitr.db'}", backup_interval=0) as a,
            DatabaseClient(f"sqlite:///{tmp_path / 'restored.db'}", backup_interval=0) as b,
        ):
            assert dump(a, {"busy"}) == dump(b, {"busy"})
            steps = b.load_steps("busy")
            # Two transactions per round (step, then metadata): the snapshot is between or after.
            assert b.load_metadata("busy")["last"] in (steps[-1]["step_number"] - 1, steps[-1]["step_number"])
            assert b.validate()["ok"]


def test_backups_are_listed_with_their_manifest_and_readable_by_the_owner_only(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk"
    with DatabaseClient(db_url, backup_dir=str(folder)) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, game_state={"tick": 0})
        backup_id = db.create_backup()
        (entry,) = db.list_backups()
    assert entry["id"] == backup_id
    for key in ("id", "timestamp", "size", "backend", "schema_version", "verified"):
        assert key in entry
    assert entry["verified"] is True
    assert entry["backend"] == Settings.resolve(db_url).backend
    assert entry["schema_version"] == fle_migrations.latest_revision()
    assert entry["rows"]["steps"] == 1 and entry["rows"]["game_states"] == 1
    path = Path(entry["path"])
    assert entry["size"] == path.stat().st_size
    manifest = orjson.loads((folder / f"{backup_id}.json").read_bytes())
    assert manifest["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for file in (path, folder / f"{backup_id}.json"):
        assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert not list(folder.glob("*.tmp*")) and not list(folder.glob("*-wal"))


def test_backup_copy_and_migration_calls_are_counted_in_the_performance_metrics(db_url: str, tmp_path: Path) -> None:
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        backup_id = db.create_backup()
        db.verify_backup(backup_id)
        db.list_backups()
        db.prune_backups(keep=1)
        db.recovery_window()
        db.copy_to(_new_sqlite(tmp_path, "copy"))
        db.migrate()
        db.get_migration_status()
        with pytest.raises(NotFoundError):
            db.verify_backup("20000101T000000000000Z-dead")
        operations = db.get_performance_metrics()["operations"]
    for name in ("list_backups", "prune_backups", "recovery_window", "copy_to", "migrate", "get_migration_status"):
        assert operations[name]["count"] == 1, name
    assert (operations["verify_backup"]["count"], operations["verify_backup"]["errors"]) == (2, 1)


def test_the_next_backup_removes_what_a_killed_backup_left(db_url: str, tmp_path: Path) -> None:
    """Every temporary name a backup, verification or restore writes: the copy and its journal,
    the manifest's ``atomic_file`` temporary (``.ID.json.XXXX.tmp``) and ``.work-*`` copies."""
    folder = tmp_path / "bk"
    folder.mkdir(mode=0o700)
    leftovers = [
        folder / "20261204T101010000000Z-abcd.db.tmp",
        folder / "20261204T101010000000Z-abcd.db.tmp-journal",
        folder / ".20261204T101010000000Z-abcd.json.k3j_x9.tmp",
        folder / ".work-q1w2e3" / "20261204T101010000000Z-abcd.db",
    ]
    for leftover in leftovers:
        leftover.parent.mkdir(exist_ok=True)
        leftover.write_bytes(b"partial")
    with DatabaseClient(db_url, backup_dir=str(folder)) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        backup_id = db.create_backup()
        assert [entry["id"] for entry in db.list_backups()] == [backup_id]
    assert {p.name for p in folder.iterdir()} - {".lock"} == {f"{backup_id}.db", f"{backup_id}.json"}


def test_restore_in_place_replaces_the_data_and_can_itself_be_undone(db_url: str, tmp_path: Path) -> None:
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_trajectory({"id": "kept", "task": "iron"})
        db.save_step({"trajectory_id": "kept", "step_number": 0, "action": "a"}, game_state={"tick": 0})
        db.save_trajectory({"id": "fork", "parent_trajectory_id": "kept", "parent_step_number": 0})
        before = dump(db, {"kept", "fork", "later"})
        backup_id = db.create_backup()
        db.save_step({"trajectory_id": "later", "step_number": 0, "action": "b"}, game_state={"tick": 9})
        db.save_metadata("kept", "k", "changed")
        db.delete_trajectory("fork")
        time.sleep(0.002)
        changed_at = datetime.now(UTC)
        changed = dump(db, {"kept", "fork", "later"})
        report = db.restore_backup(backup_id)
        assert report["safety_backup"] != backup_id
        assert dump(db, {"kept", "fork", "later"}) == before
        assert db.validate()["ok"]
        db.restore_to(changed_at)  # undo the restore
        assert dump(db, {"kept", "fork", "later"}) == changed


def test_a_damaged_backup_is_refused_before_the_live_database_is_touched(db_url: str, tmp_path: Path) -> None:
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, game_state={"tick": 0, "pad": "p" * 999})
        backup_id = db.create_backup()
        db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"})
        path = Path(db.list_backups()[0]["path"])
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        live = dump(db, {"t"})
        with pytest.raises(DataIntegrityError, match="SHA-256"):
            db.restore_backup(backup_id)
        with pytest.raises(DataIntegrityError):
            db.verify_backup(backup_id)
        assert dump(db, {"t"}) == live
        assert len(db.list_backups()) == 1  # no safety backup was taken either
        with pytest.raises(NotFoundError):
            db.restore_backup("20000101T000000000000Z-dead")


def test_a_backup_whose_content_is_damaged_but_checksummed_fails_validation(db_url: str, tmp_path: Path) -> None:
    """A byte flipped inside a stored blob passes SQLite's integrity_check; the restore's full
    validation still refuses it (the manifest's SHA-256 is recomputed to get past that check)."""
    folder = tmp_path / "bk"
    with DatabaseClient(db_url, backup_dir=str(folder)) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, game_state={"tick": 0, "pad": "p" * 999})
        backup_id = db.create_backup()
        path = Path(db.list_backups()[0]["path"])
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE blobs SET body = CAST(upper(body) AS BLOB)")
        conn.close()
        manifest_path = folder / f"{backup_id}.json"
        manifest = orjson.loads(manifest_path.read_bytes())
        manifest["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest_path.write_bytes(orjson.dumps(manifest))
        with pytest.raises(DataIntegrityError, match="validation"):
            db.restore_backup(backup_id)
        assert db.load_steps("t")[0]["action"] == "a"


def _backup_from_old_schema(folder: Path, revision: str) -> str:
    """A backup file made by an older (or, with an unknown revision, newer) fle-db."""
    folder.mkdir(parents=True, exist_ok=True)
    backup_id = "20260101T000000000000Z-01d0"
    path = folder / f"{backup_id}.db"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        fle_migrations.upgrade(conn, "0004_step_time_index")
        conn.execute(
            text(
                "INSERT INTO trajectories (id, task, codec, body, created_at, updated_at)"
                " VALUES ('old', 'iron', 'json', :body, 1, 1)"
            ),
            {"body": b'{"note":"from 0004"}'},
        )
        if revision != "0004_step_time_index":
            conn.execute(text("UPDATE fle_db_version SET version_num = :r"), {"r": revision})
    engine.dispose()
    manifest = {
        "format": "fle-db-backup/1",
        "id": backup_id,
        "timestamp": "2026-01-01T00:00:00+00:00",
        "backend": "sqlite",
        "schema_version": revision,
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "verified": True,
    }
    (folder / f"{backup_id}.json").write_bytes(orjson.dumps(manifest))
    return backup_id


def test_a_backup_of_an_older_schema_is_migrated_forward_on_restore(db_url: str, tmp_path: Path) -> None:
    backup_id = _backup_from_old_schema(tmp_path / "bk", "0004_step_time_index")
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_trajectory({"id": "new", "task": "copper"})
        db.restore_backup(backup_id)
        assert db.load_trajectory("old")["note"] == "from 0004"
        with pytest.raises(NotFoundError):
            db.load_trajectory("new")
    assert Path(tmp_path / "bk" / f"{backup_id}.db").read_bytes()  # the backup file itself untouched


def test_a_backup_from_a_newer_fle_db_is_refused(db_url: str, tmp_path: Path) -> None:
    backup_id = _backup_from_old_schema(tmp_path / "bk", "9999_from_the_future")
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_trajectory({"id": "new", "task": "copper"})
        with pytest.raises(SchemaVersionError, match="newer"):
            db.restore_backup(backup_id)
        assert db.load_trajectory("new")["task"] == "copper"


def test_retention_prunes_by_count_and_by_age_and_keeps_the_newest(db_url: str, tmp_path: Path) -> None:
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        made = [db.create_backup() for _ in range(4)]
        assert db.prune_backups(keep=2) == sorted(made[:2])
        assert [b["id"] for b in db.list_backups()] == made[2:]
        assert db.prune_backups(older_than=0) == [made[2]]
        assert [b["id"] for b in db.list_backups()] == made[3:]
        with pytest.raises(ValidationError):
            db.prune_backups()


def test_restoring_into_a_database_that_is_not_empty_is_refused(db_url: str, tmp_path: Path, make_url) -> None:  # type: ignore[no-untyped-def]
    with DatabaseClient(db_url, backup_dir=str(tmp_path / "bk")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        backup_id = db.create_backup()
        other = make_url("sqlite")
        with DatabaseClient(other, backup_interval=0) as busy:
            busy.save_step({"trajectory_id": "mine", "step_number": 0, "action": "keep me"})
        with pytest.raises(ConflictError, match="not empty"):
            db.restore_backup(backup_id, target=other)
        with DatabaseClient(other, backup_interval=0) as busy:
            assert busy.load_steps("mine")[0]["action"] == "keep me"


def test_automated_backups_run_on_their_interval_and_keep_the_newest(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk"
    with DatabaseClient(db_url, backup_dir=str(folder), backup_interval=0.3, backup_keep=2) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(db.list_backups()) < 2:
            time.sleep(0.1)
        time.sleep(1.0)
        backups = db.list_backups()
    assert 1 <= len(backups) <= 2
    assert all(b["verified"] for b in backups)


def test_copy_moves_a_whole_database_across_backends_and_back_identically(
    db_url: str, tmp_path: Path, make_url: Callable[[str], str]
) -> None:
    ids = {"a", "b"}
    with DatabaseClient(db_url, backup_interval=0) as db:
        db.save_trajectory({"id": "a", "task": "iron", "total_reward": 1.5})
        for n in range(5):
            db.save_step(
                {"trajectory_id": "a", "step_number": n, "action": f"s{n}"},
                agent_output={"code": "x"},
                game_state={"tick": n, "research": {"tech": ["a"] * 300}},
            )
        db.save_trajectory({"id": "b", "parent_trajectory_id": "a", "parent_step_number": 2})
        db.save_metadata("a", "model", "m1")
        db.delete_trajectory("b")  # history crosses over too
        first = db.append_step("a", {"action": "node"}, node={"tree": "w0", "depth": 1, "value": 0.5})["node_id"]
        db.update_search_stats(first, add_visits=2)
        original = dump(db, ids)
        other = make_url("postgres" if db_url.startswith("sqlite") else "sqlite")
        progress: list[tuple[str, int, int]] = []
        report = db.copy_to(other, progress=lambda table, rows, total: progress.append((table, rows, total)))
        assert report["rows"]["steps"] == 6 and report["rows"]["trajectories_history"] == 1
        assert sum(rows for table, rows, _ in progress if table == "steps") == 6
        assert {total for table, _, total in progress if table == "steps"} == {6}
        back = _new_sqlite(tmp_path, "back")
        with DatabaseClient(other, backup_interval=0) as middle:
            assert dump(middle, ids) == original
            middle.copy_to(back)
            assert middle.recovery_window() == db.recovery_window()
            # Ids the database generates continue after the copied ones.
            later = middle.append_step("a", {"action": "next"}, node={"tree": "w0", "depth": 2, "value": None})
            assert later["node_id"] > first
        with DatabaseClient(f"sqlite:///{back}", backup_interval=0) as final:
            assert dump(final, ids) == original
            assert final.validate()["ok"]
        with pytest.raises(ConflictError):
            db.copy_to(other)


def test_settings_for_backups_come_from_arguments_then_environment() -> None:
    env = {"FLE_DB_BACKUP_DIR": "/tmp/x", "FLE_DB_BACKUP_INTERVAL": "60", "FLE_DB_BACKUP_KEEP": "3",
           "FLE_DB_PITR_RETENTION": "3600"}  # fmt: skip
    settings = Settings.resolve("sqlite://", environ=env)
    assert (str(settings.backup_dir), settings.backup_interval, settings.backup_keep, settings.pitr_retention) == (
        "/tmp/x",
        60.0,
        3,
        3600.0,
    )
    assert Settings.resolve("sqlite://", backup_keep=5, environ=env).backup_keep == 5
    default = Settings.resolve("sqlite://", environ={})
    assert (str(default.backup_dir), default.backup_interval, default.pitr_retention) == (
        ".fle/backups",
        None,
        604800.0,
    )
    with pytest.raises(ConfigurationError, match="FLE_DB_BACKUP_INTERVAL"):
        Settings.resolve("sqlite://", environ={"FLE_DB_BACKUP_INTERVAL": "soon"})
    assert os.environ.get("FLE_DB_BACKUP_INTERVAL") is None
