"""Backups and recovery: the backup, restore, point-in-time and copy methods of
:class:`~fle_db.DatabaseClient`.

The work is :mod:`fle_db.ops.backup`'s (one snapshot mechanism behind all of them); this mixin
only validates, delegates and shapes the answers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from . import instants
from .backends.base import CheckpointStore, HistoryStore, as_history
from .config import Settings
from .ops import backup
from .ops.metrics import Metrics, timed
from .validation import check_callback


class Recovery:
    """Backup, restore, point-in-time and copy methods; mixed into :class:`~fle_db.DatabaseClient`."""

    _backend: CheckpointStore
    _settings: Settings
    _backups: backup.BackupStore
    _metrics: Metrics
    apply_retention: Callable[..., dict[str, Any]]  # the Maintenance mixin's

    @property
    def _history(self) -> HistoryStore:
        """The backend's point-in-time history (UnsupportedError if it lacks the role)."""
        return as_history(self._backend)

    @timed
    def create_backup(self) -> str:
        """Back up the whole database into ``backup_dir`` (default ``.fle/backups``) and return
        the backup's id. Consistent while writers keep writing; written under a temporary name,
        checked (SQLite ``integrity_check`` and a full :meth:`validate` of the copy), fsynced and
        renamed, with a manifest (row counts, SHA-256, schema revision, commit). Files are
        owner-only. A backup is a SQLite file whatever the backend, so it restores anywhere.

        Raises:
            DataIntegrityError: the copy failed its checks (it is not kept or listed).
        """
        return str(self._backups.create(self._backend)["id"])

    @timed
    def list_backups(self) -> list[dict[str, Any]]:
        """The complete backups in ``backup_dir``, oldest first, each a dict with ``id``,
        ``timestamp`` (ISO 8601 UTC), ``size`` (bytes), ``backend``, ``schema_version``,
        ``verified``, ``path``, ``rows`` (per table) and ``commit`` (``seq``, ``committed_at``).
        Read-only."""
        return self._backups.entries()

    @timed
    def verify_backup(self, backup_id: str) -> dict[str, Any]:
        """Re-check a backup fully: SHA-256 against its manifest, ``integrity_check`` and a
        full validation of a working copy. Read-only.

        Raises:
            NotFoundError: no such backup. DataIntegrityError: it is damaged (says how).
        """
        return self._backups.verify(backup_id)

    @timed
    def restore_backup(self, backup_id: str, target: str | None = None) -> dict[str, Any]:
        """Restore a backup. Everything is checked before the live database is touched (SHA-256,
        integrity, full validation; a backup of an older schema is migrated forward, a newer one
        refused). With ``target=None`` a safety backup of the live database is taken first, then
        one transaction makes the backup's data current; the replaced data stays in the
        point-in-time history, so :meth:`restore_to` can undo the restore. With ``target`` (a new
        SQLite path or the URL of an empty database) the backup is copied there instead.

        Returns ``{"id", "checks", "rows", "safety_backup"?}``.

        Raises:
            NotFoundError, DataIntegrityError, SchemaVersionError; ConflictError: ``target`` not empty.
        """
        return self._backups.restore(self._backend, backup_id, target)

    @timed
    def prune_backups(self, keep: int | None = None, older_than: float | None = None) -> list[str]:
        """Delete backups beyond the ``keep`` newest and those older than ``older_than``
        seconds (the newest is always kept); returns the ids deleted. Idempotent."""
        return self._backups.prune(keep, older_than)

    @timed
    def restore_to(self, timestamp: datetime | str | float, target: str | None = None) -> dict[str, Any]:
        """Point-in-time recovery: the database exactly as committed at ``timestamp`` (an aware
        ``datetime``, an ISO 8601 string with offset, or epoch seconds): every transaction
        committed at or before it, none after. A transaction's commit instant is when it took its
        commit number (see :meth:`recovery_window`); no server configuration is needed.

        ``target``: a new SQLite path or the URL of an empty database, which receives the copy
        (history included). ``target=None``: in place, after a safety backup, as one new commit
        that keeps history (so it can itself be undone).

        Returns ``{"at", "commit": {"seq", "committed_at"}, "rows" | "rows_changed",
        "safety_backup"?}``.

        Raises:
            ValidationError: ``timestamp`` is malformed, naive, in the future or before the
                recovery window (``pitr_retention``, default 7 days; see :meth:`recovery_window`).
        """
        return backup.restore_to(self._backend, self._settings, timestamp, target, self._backups)

    def backup_scheduler(self, interval: float, keep: int) -> backup.BackupScheduler:
        """A scheduler of automated backups of this database (not started): ``run_once()`` backs
        up if the newest backup is ``interval`` seconds old, keeps the ``keep`` newest and prunes
        point-in-time history; after each new backup it applies the ``retention`` setting, if
        any (:meth:`apply_retention`); ``start()`` runs that in a daemon thread until ``stop()``.
        Opening a client with ``backup_interval`` does this for you."""
        policy = self.apply_retention if self._settings.retention is not None else None
        return backup.BackupScheduler(self._backups, self._backend, interval, keep, policy)

    @timed
    def recovery_window(self) -> dict[str, Any]:
        """``{"from", "to"}`` (ISO 8601 UTC): the instants :meth:`restore_to` can reach, with
        ``from_seq``/``to_seq``, the commit numbers. Read-only."""
        horizon, latest = self._history.recovery_window()
        return {
            "from": instants.iso(horizon.committed_at),
            "to": instants.iso(latest.committed_at),
            "from_seq": horizon.seq,
            "to_seq": latest.seq,
        }

    @timed
    def copy_to(self, target: str, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Copy the whole database (history included) into ``target``: a new SQLite path or the
        URL of an empty database of any backend, in one consistent snapshot and one target
        transaction. ``progress(table, rows_written, table_total)`` is called per chunk.

        Raises:
            ConflictError: ``target`` is not empty.
        """
        progress = check_callback(progress)
        with backup.open_database(self._settings, target) as destination:
            return backup.copy_database(self._backend, destination, progress=progress)
