"""Keeping storage bounded: the ``cleanup``, ``thin`` and ``apply_retention`` methods of
:class:`~fle_db.DatabaseClient`.

The work is the backend's (``cleanup`` and ``thin`` of :mod:`fle_db.backends.sql`); this mixin
validates the criteria both share (the same selection, the same age semantics) and applies the
retention policy of :mod:`fle_db.retention`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from . import instants
from .backends.base import CheckpointStore, CleanupCriteria, ThinRule
from .config import Settings
from .errors import ValidationError
from .ops.metrics import Metrics, timed
from .retention import RetentionPolicy
from .retention import parse as parse_retention
from .validation import check_count, check_ids, check_text, is_int


class Maintenance:
    """Cleanup, thinning and retention; mixed into :class:`~fle_db.DatabaseClient`."""

    _backend: CheckpointStore
    _settings: Settings
    _metrics: Metrics

    @timed
    def cleanup(
        self,
        older_than: timedelta | float | None = None,
        *,
        before: datetime | str | float | None = None,
        trajectory_ids: Iterable[str] | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        keep_best_per_task: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete old or unwanted trajectories, lineage-aware, in one transaction.

        Selects the trajectories matching EVERY criterion given: no activity (trajectory or
        step written) for ``older_than`` (a ``timedelta`` or seconds) or since ``before`` (an
        aware datetime, ISO 8601 string with offset, or epoch seconds, as :meth:`restore_to`
        takes), the ids ``trajectory_ids`` (a single string is one id), ``task``,
        ``agent_type``, and with ``keep_best_per_task=N`` all but the N highest
        ``total_reward`` of each task. A selected trajectory that a surviving one forks from is
        kept (``kept_for_lineage``), so no fork ever points at a deleted step. States and blobs
        nothing else uses go too. ``dry_run=True`` does the same work and rolls it back: the
        report (``trajectories`` deleted, ``kept_for_lineage``, ``rows`` deleted per table,
        payload ``bytes_freed``) is exact. The deleted rows stay restorable (:meth:`restore_to`)
        until ``pitr_retention`` has passed and :meth:`optimize` prunes them; space returns to the
        filesystem only after that, with ``optimize(vacuum=True)`` (SQLite, MySQL) or VACUUM FULL.

        Raises:
            ValidationError: no criterion, or a bad one (both ``older_than`` and ``before``...).
        """
        check_count(keep_best_per_task, "keep_best_per_task")
        criteria = _criteria("cleanup", older_than, before, trajectory_ids, task, agent_type, keep_best_per_task)
        return self._backend.cleanup(criteria, _flag(dry_run, "dry_run"))

    @timed
    def thin(
        self,
        *,
        trajectory_ids: Iterable[str] | None = None,
        older_than: timedelta | float | None = None,
        before: datetime | str | float | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        keep_every: int = 10,
        keep_best_per_depth: int = 1,
        thin_search_nodes: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Drop the game states of old steps nothing resumes from, keeping every step's action,
        output, feedback and reward, in one transaction (fork-aware).

        Selects trajectories exactly as :meth:`cleanup` does (every criterion given must hold:
        ``trajectory_ids``, no activity for ``older_than`` or since ``before``, ``task``,
        ``agent_type``; at least one is required). In them, a step keeps its game state when it
        is its trajectory's latest step (or the latest step that has a state), a fork point (a
        trajectory forks from it or a step names it as explicit parent), a search node (with
        ``thin_search_nodes=True``: only the ``keep_best_per_depth`` highest-value nodes of each
        depth of its tree), or its number is a multiple of ``keep_every``; the others' states are
        dropped unless another step still needs the same (content-addressed) state. Blobs nothing
        uses any more are deleted and kept blobs that were deltas of a deleted one are
        re-encoded, so no kept state depends on a dropped one.

        Afterwards loading a dropped state (:meth:`load_checkpoint`, :meth:`load_game_state(s)
        <load_game_state>`) raises :class:`~fle_db.errors.StateThinnedError`; the step keeps its
        ``game_state_id``; :meth:`load_latest_checkpoint` never meets one (latest steps and
        fork points are kept); exports write such a checkpoint with ``game_state`` null beside
        its ``game_state_id``; search queries ``with_state=True`` (and the FLE drop-in's
        sampling) skip such steps. Saving or importing the original checkpoint again restores
        the state and is otherwise a no-op. Thinning is an ordinary commit: :meth:`restore_to`
        an instant before it gives the full data until the history is pruned. Idempotent: a
        second run with the same arguments drops nothing more.

        Returns ``{"dry_run", "trajectories" (ids selected), "steps_thinned" (steps whose state
        was dropped), "game_states" (states dropped), "blobs_deleted", "blobs_reencoded",
        "bytes_freed", "bytes_freed_now"}``. Bytes are payload bytes (the stored bodies), measured
        as :meth:`cleanup` measures them: ``bytes_freed`` is what leaves the live tables net of
        what the re-encoding writes, which the whole database holds less once :meth:`optimize`
        has pruned the history holding the old rows (after ``pitr_retention``);
        ``bytes_freed_now`` is what it holds less right after the commit, history included
        (negative: the dropped rows move into history). ``dry_run=True`` does the same work and
        rolls it back, so both figures are exact. Files shrink only after the prune, with
        ``optimize(vacuum=True)`` (SQLite, MySQL) or VACUUM FULL (PostgreSQL).

        Raises:
            ValidationError: no selection criterion, or a bad argument (``keep_every`` and
            ``keep_best_per_depth`` are integers >= 1). UnsupportedError: a custom backend
            without ``thin``.
        """
        rule = ThinRule(
            _at_least_one(keep_every, "keep_every"),
            _at_least_one(keep_best_per_depth, "keep_best_per_depth"),
            _flag(thin_search_nodes, "thin_search_nodes"),
        )
        criteria = _criteria("thin", older_than, before, trajectory_ids, task, agent_type, None)
        return self._backend.thin(criteria, rule, _flag(dry_run, "dry_run"))

    @timed
    def apply_retention(self, policy: str | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        """Apply a retention policy (:mod:`fle_db.retention` gives the grammar): ``policy``, else
        the client's ``retention`` setting (``FLE_DB_RETENTION``). The delete rule runs first, as
        :meth:`cleanup` (``older_than``, ``keep_best_per_task``: lineage-aware), then the thin
        rule, as :meth:`thin` (``older_than``, ``keep_every``), each in its own transaction.
        Idempotent: applying it again right away changes nothing more.

        Returns ``{"dry_run", "policy" (canonical text), "delete" (cleanup's report or None),
        "thin" (thin's report or None)}``. With ``dry_run`` each rule is tried and rolled back
        on its own, so ``thin`` also counts trajectories the delete rule would remove.

        Raises:
            ConfigurationError: the policy does not parse (the message names the rule).
            ValidationError: no policy given and none configured.
        """
        found: RetentionPolicy | None = (
            parse_retention(policy, "policy") if policy is not None else self._settings.retention
        )
        if found is None:
            raise ValidationError("no retention policy: pass one, or set retention= / FLE_DB_RETENTION")
        dry = _flag(dry_run, "dry_run")
        report: dict[str, Any] = {"dry_run": dry, "policy": found.text, "delete": None, "thin": None}
        if found.delete is not None:
            report["delete"] = self._backend.cleanup(
                _criteria("cleanup", found.delete.older_than, None, None, None, None, found.delete.keep_best_per_task),
                dry,
            )
        if found.thin is not None:
            rule = ThinRule(found.thin.keep_every)
            report["thin"] = self._backend.thin(
                _criteria("thin", found.thin.older_than, None, None, None, None, None), rule, dry
            )
        return report


def _criteria(
    what: str,
    older_than: timedelta | float | None,
    before: datetime | str | float | None,
    trajectory_ids: Iterable[str] | None,
    task: str | None,
    agent_type: str | None,
    keep_best_per_task: int | None,
) -> CleanupCriteria:
    """The selection ``cleanup`` and ``thin`` share. ValidationError without any criterion."""
    if older_than is not None and before is not None:
        raise ValidationError(f"{what}: give older_than or before, not both")
    if older_than is not None:
        ago = instants.ago_us(instants.parse_duration(older_than, "older_than"))
        if ago < 0:
            raise ValidationError(f"older_than {older_than!r:.80} reaches back before 1970")
        cutoff: int | None = ago
    else:
        cutoff = instants.optional_instant(before, "before")
    chosen = check_ids(trajectory_ids, "trajectory_ids") if trajectory_ids is not None else None
    criteria = CleanupCriteria(
        cutoff, chosen, check_text(task, "task"), check_text(agent_type, "agent_type"), keep_best_per_task
    )
    if criteria == CleanupCriteria():
        verb = "deletes" if what == "cleanup" else "thins"
        raise ValidationError(f"{what} needs at least one criterion (it never {verb} everything by default)")
    return criteria


def _at_least_one(value: Any, what: str) -> int:
    if not is_int(value) or not 1 <= value < 2**63:
        raise ValidationError(f"{what} must be an integer >= 1, got {value!r:.80}")
    return int(value)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{what} must be True or False, got {value!r:.80}")
    return value


__all__ = ["Maintenance"]
