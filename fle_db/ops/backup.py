"""Backups, restores, point-in-time recovery and whole-database copies, on every backend alike.

One mechanism underlies all of them: a backend's :meth:`~fle_db.backends.base.HistoryStore.snapshot`
(every table read in one consistent transaction, optionally as of a past commit) written into
another database by :meth:`~fle_db.backends.base.HistoryStore.load_snapshot`.

* A **backup** is a snapshot written into a new SQLite file: portable (a PostgreSQL backup
  restores into SQLite and back), openable with any SQLite tool, and carrying the history and
  commit log, so point-in-time recovery still reaches back from a restored backup. It is written
  under a temporary name, checked (``PRAGMA integrity_check``, then fle-db's own ``validate``:
  every blob's checksum and digest, which ``integrity_check`` cannot see), fsynced and renamed;
  its manifest (``<id>.json``: row counts, SHA-256, schema revision, commit) is written last, the
  same way. A backup without a manifest is not listed; a stopped backup leaves only temporary
  files (``*.db.tmp*``, ``.<id>.json.*.tmp``) and ``.work-*`` folders, removed by the next backup.
* A **restore** checks the file's SHA-256 and validates a working copy (migrated forward if the
  backup is older) before it touches the live database, takes a safety backup, then makes the
  backup's rows current in one transaction. The live database's history is kept, so the restore
  itself can be undone with :func:`restore_to`.
* **Point-in-time recovery** needs no server configuration: see :mod:`fle_db.backends.sql.versioned`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from .._version import __version__
from ..backends import CheckpointStore, as_history, open_backend
from ..config import Settings, database_url
from ..errors import ConfigurationError, DataIntegrityError, NotFoundError, SchemaVersionError, ValidationError
from ..instants import ago_us, from_us, iso, now_us, parse_duration, parse_instant, to_seconds
from ..validation import is_int, is_number
from .files import atomic_file, check_replaceable, fsync
from .validate import validate

log = logging.getLogger("fle_db")

MANIFEST_FORMAT = "fle-db-backup/1"
#: What a backup id looks like (``create`` makes them: UTC time + 4 hex digits). Every backup
#: path is derived from an id that matched this and the configured folder, never from a file's
#: content: a manifest saying ``"id": "../data"`` names nothing.
BACKUP_ID = re.compile(r"[0-9]{8}T[0-9]{12}Z-[0-9a-f]{4}")
#: ``progress(table, rows_just_written, rows_of_that_table)``
Progress = Callable[[str, int, int], None]


@contextmanager
def open_database(settings: Settings, url: str | Path, migrate: bool = True) -> Iterator[CheckpointStore]:
    """A backend on ``url`` (a URL, or a path for a SQLite file: see
    :func:`~fle_db.config.database_url`) with ``settings``' other options, migrated to this
    library's schema unless ``migrate=False``; closed on exit."""
    backend = open_backend(settings.with_url(database_url(url)))
    try:
        if migrate:
            backend.migrate()
        yield backend
    finally:
        backend.close()


def copy_database(
    source: CheckpointStore, target: CheckpointStore, seq: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Copy everything of ``source`` (as committed at ``seq``; None: now) into the empty
    ``target``, history and commit log included, in one target transaction.

    Raises:
        ConflictError: ``target`` is not empty.
        SchemaVersionError: ``source`` is not at this library's schema revision (migrate it).
    """
    with as_history(source).snapshot(seq) as snap:
        expected = target.migration_status().current_version
        if snap.revision != expected:
            raise SchemaVersionError(
                f"the source database is at schema revision {snap.revision!r}, not {expected!r}: migrate it first"
            )
        totals: dict[str, int] = {}

        def tell(table: str, rows: int) -> None:
            assert progress is not None
            if table not in totals:
                totals[table] = snap.count(table)
            progress(table, rows, totals[table])

        rows = as_history(target).load_snapshot(snap, replace=False, progress=tell if progress is not None else None)
        commit = {"seq": snap.head.seq, "committed_at": iso(snap.head.committed_at)}
    return {"rows": rows, "commit": commit, "schema_version": snap.revision}


def restore_to(
    backend: CheckpointStore, settings: Settings, at: Any, target: str | None, store: BackupStore | None
) -> dict[str, Any]:
    """The database exactly as committed at ``at`` (see :func:`parse_instant`): into ``target``
    (a new SQLite path or the URL of an empty database) or, with ``target=None``, in place as one
    new commit after a safety backup into ``store``."""
    at_us = parse_instant(at, "the point in time")
    history = as_history(backend)
    point = history.commit_at(at_us)
    report: dict[str, Any] = {"at": iso(at_us), "commit": {"seq": point.seq, "committed_at": iso(point.committed_at)}}
    if target is None:
        if store is not None:
            report["safety_backup"] = store.create(backend)["id"]
        report["rows_changed"] = history.rewind(point.seq)
        return report
    url = database_url(target)
    where = settings.with_url(url)
    if where.backend == "sqlite" and where.database_exists():
        raise ValidationError(
            f"restore target {where.location!r} exists; give a new SQLite path or an empty database's URL"
        )
    with open_database(settings, url) as destination:
        report["rows"] = copy_database(backend, destination, point.seq)["rows"]
    report["target"] = where.location
    return report


class BackupStore:
    """The backups of one database in one folder: ``<id>.db`` (SQLite) + ``<id>.json`` (manifest).

    Safe across processes: creating, pruning and restoring hold an exclusive lock on the folder's
    ``.lock`` file, so concurrent automated backups never interleave.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.folder = settings.backup_dir

    # -- files -----------------------------------------------------------------------------
    def _prepare(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:  # a file in the way, no permission...
            raise ConfigurationError(f"backup_dir {str(self.folder)!r} cannot be used as a folder: {exc}") from None
        if not self.folder.is_dir():
            raise ConfigurationError(f"backup_dir {str(self.folder)!r} is not a folder")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # filelock: fcntl.flock on POSIX, LockFileEx on Windows; imported here because on POSIX
        # it imports fcntl, and `import fle_db` must work where fcntl does not exist.
        from filelock import FileLock

        self._prepare()
        with FileLock(self.folder / ".lock", mode=0o600):
            yield

    def _sweep_partial(self) -> None:
        """Remove what a stopped backup, verification or restore left: the database copy
        (``<id>.db.tmp`` and its journal), the manifest's temporary file (``atomic_file``:
        ``.<id>.json.XXXX.tmp``) and working copies (``.work-*`` folders). Only ever called
        under the lock, so nothing in progress is removed; links are never followed."""
        for pattern in ("*.db.tmp*", ".*.json.*.tmp", ".work-*"):
            for leftover in self.folder.glob(pattern):
                if leftover.is_symlink():
                    continue
                if leftover.is_dir() and pattern == ".work-*":
                    log.warning("removing %s, left by a backup that was stopped", leftover)
                    shutil.rmtree(leftover, ignore_errors=True)
                elif leftover.is_file():
                    log.warning("removing %s, left by a backup that was stopped", leftover)
                    leftover.unlink(missing_ok=True)

    def _manifest(self, backup_id: Any) -> dict[str, Any]:
        """The checked manifest of ``backup_id``: its file name, its ``id`` and its shape agree.

        Raises:
            ValidationError: not a backup id. NotFoundError: no such backup.
            DataIntegrityError: the manifest is damaged or foreign.
        """
        if not isinstance(backup_id, str) or not BACKUP_ID.fullmatch(backup_id):
            raise ValidationError(f"not a backup id: {backup_id!r:.80} (ids look like 20260101T000000000000Z-0a1b)")
        path = self.folder / f"{backup_id}.json"
        try:
            manifest: Any = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no backup {backup_id!r} in {self.folder}") from None
        except (orjson.JSONDecodeError, OSError) as exc:
            raise DataIntegrityError(f"the manifest of backup {backup_id!r} is unreadable: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise DataIntegrityError(f"{path.name} is not an fle-db backup manifest ({MANIFEST_FORMAT})")
        problems = [
            key
            for key, kind in (("id", str), ("timestamp", str), ("size", int), ("sha256", str))
            if not isinstance(manifest.get(key), kind)
        ]
        if not problems and manifest["id"] != backup_id:
            problems.append("id (it names another backup)")
        if not problems:
            try:
                if datetime.fromisoformat(manifest["timestamp"]).tzinfo is None:
                    problems.append("timestamp")
            except ValueError:
                problems.append("timestamp")
        if problems:
            raise DataIntegrityError(f"the manifest of backup {backup_id!r} is damaged: bad {', '.join(problems)}")
        return manifest

    # -- create ----------------------------------------------------------------------------
    def create(self, backend: CheckpointStore) -> dict[str, Any]:
        """Back up ``backend`` consistently (writers may keep writing); returns the manifest.

        Raises:
            DataIntegrityError: the written copy failed its checks (nothing is listed).
        """
        with self._locked():
            return self._create(backend)

    def _create(self, backend: CheckpointStore) -> dict[str, Any]:
        """:meth:`create`, for a caller that holds the folder lock."""
        self._sweep_partial()
        now = now_us()
        backup_id = from_us(now).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(2)
        work = self.folder / f"{backup_id}.db.tmp"
        started = time.perf_counter()
        with open_database(self.settings, work) as destination:
            copied = copy_database(backend, destination)
        checks = _verify_file(self.settings, work)
        _seal(work)
        final = self.folder / f"{backup_id}.db"
        digest = _sha256(work)
        check_replaceable(final)
        os.replace(work, final)
        manifest = {
            "format": MANIFEST_FORMAT,
            "id": backup_id,
            "timestamp": iso(now),
            "backend": backend.name,
            "source": self.settings.safe_url(),
            "schema_version": copied["schema_version"],
            "fle_db_version": __version__,
            "size": final.stat().st_size,
            "sha256": digest,
            "rows": copied["rows"],
            "commit": copied["commit"],
            "verified": True,
            "checks": checks,
            "seconds": round(time.perf_counter() - started, 3),
        }
        with atomic_file(self.folder / f"{backup_id}.json") as file:
            file.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
        fsync(self.folder)
        log.info("backup %s of %s: %d bytes", backup_id, self.settings.safe_url(), manifest["size"])
        return manifest

    # -- read ------------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Every complete backup, oldest first: ``id``, ``timestamp``, ``size``, ``backend``,
        ``schema_version``, ``verified`` (checked when written, and its file is still there with
        that size), ``path``, ``rows``, ``commit``."""
        if not self.folder.exists():
            return []
        self._prepare()
        backups = []
        for path in sorted(self.folder.glob("*.json")):
            if not BACKUP_ID.fullmatch(path.stem):
                continue  # not a file fle-db writes
            try:
                manifest = self._manifest(path.stem)
            except (DataIntegrityError, NotFoundError) as exc:
                log.warning("skipping %s: %s", path, exc)
                continue
            db = self.folder / f"{path.stem}.db"
            present = db.is_file() and db.stat().st_size == manifest["size"]
            backups.append({**manifest, "path": str(db), "verified": bool(manifest.get("verified")) and present})
        return sorted(backups, key=lambda b: (b["timestamp"], b["id"]))

    def verify(self, backup_id: str) -> dict[str, Any]:
        """Re-check a backup fully (SHA-256, integrity, fle-db validation of a working copy).

        Raises:
            NotFoundError: no such backup. DataIntegrityError: it is damaged (the message says how).
        """
        manifest = self._manifest(backup_id)
        with self._working_copy(manifest) as work:
            checks = _verify_file(self.settings, work)
        return {"id": backup_id, "ok": True, "checks": checks}

    @contextmanager
    def _working_copy(self, manifest: dict[str, Any]) -> Iterator[Path]:
        """A private copy of the backup file after its SHA-256 matched, removed on exit."""
        source = self.folder / f"{manifest['id']}.db"
        if not source.is_file():
            raise DataIntegrityError(f"backup {manifest['id']!r}: its file {source} is missing")
        self._prepare()
        folder = Path(tempfile.mkdtemp(prefix=".work-", dir=self.folder))  # mode 0700
        work = folder / f"{manifest['id']}.db"
        try:
            shutil.copyfile(source, work)
            os.chmod(work, 0o600)
            if _sha256(work) != manifest["sha256"]:
                raise DataIntegrityError(f"backup {manifest['id']!r}: its file does not match the manifest's SHA-256")
            yield work
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # -- restore ---------------------------------------------------------------------------
    def restore(self, backend: CheckpointStore, backup_id: str, target: str | None = None) -> dict[str, Any]:
        """Restore a backup into ``backend`` (``target=None``: after a safety backup, one new
        commit makes the backup's data current) or into ``target`` (a new SQLite path or the URL
        of an empty database: an exact copy, history included). A backup of an older schema is
        migrated forward; a newer one is refused.

        Raises:
            NotFoundError, DataIntegrityError (checked before anything is touched),
            SchemaVersionError (a newer fle-db made it).
        """
        manifest = self._manifest(backup_id)
        with self._locked(), self._working_copy(manifest) as work:
            checks = _verify_file(self.settings, work)
            report: dict[str, Any] = {"id": backup_id, "checks": checks}
            with open_database(self.settings, work) as source:
                if target is None:
                    report["safety_backup"] = self._create(backend)["id"]
                    with as_history(source).snapshot() as snap:
                        report["rows"] = as_history(backend).load_snapshot(snap, replace=True)
                else:
                    with open_database(self.settings, target) as destination:
                        report["rows"] = copy_database(source, destination)["rows"]
        return report

    # -- retention -------------------------------------------------------------------------
    def prune(self, keep: int | None = None, older_than: float | None = None) -> list[str]:
        """Delete backups beyond the ``keep`` newest and those older than ``older_than`` seconds
        (the newest backup is always kept). Returns the ids deleted."""
        if keep is not None and (not is_int(keep) or keep < 1):
            raise ValidationError(f"keep must be an integer >= 1, got {keep!r}")
        if older_than is not None:
            older_than = parse_duration(older_than, "older_than")
        if keep is None and older_than is None:
            raise ValidationError("prune needs keep or older_than")
        with self._locked():
            backups = self.entries()
            doomed = set()
            if keep is not None:
                doomed |= {b["id"] for b in backups[:-keep]}
            if older_than is not None:
                cutoff = time.time() - older_than
                doomed |= {b["id"] for b in backups[:-1] if to_seconds(b["timestamp"]) < cutoff}
            for backup_id in sorted(doomed):
                (self.folder / f"{backup_id}.json").unlink(missing_ok=True)  # unlisted first
                (self.folder / f"{backup_id}.db").unlink(missing_ok=True)
            fsync(self.folder)
        return sorted(doomed)

    def newest_age(self) -> float | None:
        """Seconds since the newest backup, None without any."""
        backups = self.entries()
        if not backups:
            return None
        return time.time() - to_seconds(backups[-1]["timestamp"])


class BackupScheduler:
    """Automated backups: every ``interval`` seconds (counted from the newest backup in the
    folder, so several processes sharing a database don't multiply them), then retention
    (``keep`` newest), the ``retention`` policy (a callable applying the client's
    ``retention`` setting, once after each new backup, so the backup still holds what it thins or
    deletes) and point-in-time history pruning (``pitr_retention``). Runs in a daemon thread;
    :meth:`stop` waits for a backup in progress. A process killed mid-backup leaves only
    temporary files, which are never listed and are removed by the next backup."""

    def __init__(
        self,
        store: BackupStore,
        backend: CheckpointStore,
        interval: float,
        keep: int,
        retention: Callable[[], object] | None = None,
    ) -> None:
        if not is_number(interval) or not 0 < interval < float("inf"):
            raise ConfigurationError(f"backup_interval must be > 0 seconds, got {interval!r:.80}")
        if not is_int(keep) or keep < 1:
            raise ConfigurationError(f"backup_keep must be an integer >= 1, got {keep!r:.80}")
        self.store, self.backend, self.interval, self.keep = store, backend, interval, keep
        self.retention = retention
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fle-db-backups", daemon=True)
        self.last_error: Exception | None = None

    def start(self) -> BackupScheduler:
        self._thread.start()
        return self

    def run_once(self) -> dict[str, Any] | None:
        """Back up if one is due, then apply the retention policy; then prune. Returns the new
        manifest, or None if none was due."""
        age = self.store.newest_age()
        manifest = None
        if age is None or age >= self.interval:
            manifest = self.store.create(self.backend)
            self.store.prune(keep=self.keep)
            if self.retention is not None:
                self.retention()
        as_history(self.backend).prune_history(ago_us(self.store.settings.pitr_retention))
        return manifest

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                self.last_error = None
            except Exception as exc:  # keep the schedule alive; the error is logged and kept
                self.last_error = exc
                log.error("automated backup of %s failed: %s", self.store.settings.safe_url(), exc)
            age = self.store.newest_age()
            wait = self.interval - age if age is not None else self.interval
            self._stop.wait(max(0.05, min(wait, self.interval)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# -- file helpers ----------------------------------------------------------------------------
def _seal(path: Path) -> None:
    """Make a SQLite file self-contained (no WAL beside it), owner-only, and durable."""
    from ..backends import sqlite_apsw  # the bundled SQLite, as every fle-db connection

    with closing(sqlite_apsw.connect(str(path))) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    os.chmod(path, 0o600)
    fsync(path)


def _verify_file(settings: Settings, path: Path) -> dict[str, Any]:
    """SQLite's structure check, then fle-db's validation (checksums and digests of everything)
    on a database file. Raises DataIntegrityError naming the first problems."""
    from ..backends import sqlite_apsw

    try:
        with closing(sqlite_apsw.connect(f"file:{quote(str(path))}?mode=ro", uri=True)) as conn:
            result = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
    except sqlite_apsw.DatabaseError as exc:
        raise DataIntegrityError(f"{path.name} is not a readable SQLite database: {exc}") from None
    if result != ["ok"]:
        raise DataIntegrityError(f"{path.name} fails integrity_check: {'; '.join(result[:5])}")
    with open_database(settings, path) as backend:  # migrates an older backup
        report = validate(backend)
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    if errors:
        shown = "; ".join(f"{p['where']}: {p['detail']}" for p in errors[:3])
        raise DataIntegrityError(f"{path.name} fails validation ({len(errors)} errors): {shown}")
    return {"integrity_check": "ok", "validate": "ok", "checked": report["checked"]}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
