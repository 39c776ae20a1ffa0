"""``DatabaseClient``: the one facade users touch.

It validates and encodes records, then hands rows to the selected backend; it holds no SQL.
Every method is safe to call from several threads at once (the backend pools connections).
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import orjson
import pydantic

from . import listing, models
from .backends import Backend, open_backend
from .backends.base import (
    Blob,
    Checkpoint,
    CleanupCriteria,
    NodeQuery,
    NodeRow,
    SaveResult,
    StepRow,
    StoredCheckpoint,
    StoredNode,
    StoredState,
    StoredStep,
    TrajectoryFilter,
    TrajectoryRow,
)
from .config import Settings
from .errors import (
    ConflictError,
    DataIntegrityError,
    DependencyError,
    NotFoundError,
    SchemaVersionError,
    ValidationError,
)
from .explain import validation_message
from .ops import backup, export, importing
from .ops.metrics import Metrics
from .ops.validate import validate as validate_database
from .storage import codec
from .storage.engine import BlobCache, EncodedRecord, PendingBases, StateDecoder, StateEncoder

_ID = re.compile(models.ID_PATTERN)
F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=Callable[..., None])


def _timed(method: F) -> F:
    """Record the method's latency (and whether it raised) in the client's metrics."""

    @functools.wraps(method)
    def timed(self: DatabaseClient, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        failed = True
        try:
            result = method(self, *args, **kwargs)
            failed = False
            return result
        finally:
            self._metrics.record(method.__name__, time.perf_counter() - started, failed)

    return timed  # type: ignore[return-value]


_SEVERITY = ["ok", "degraded", "failing"]
_ENTRIES = ("agent_output", "environment_feedback", "game_state")
_STEP_KEYS = ("trajectory_id", "step_number")
M = TypeVar("M", bound=pydantic.BaseModel)


class DatabaseClient:
    """Checkpoint store for agent trajectories on SQLite (default), PostgreSQL, MySQL or a custom backend.

    Settings come from the arguments, then the environment (``FLE_DB_TYPE``, ``SQLITE_DB_FILE``,
    ``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD``), then defaults (SQLite at ``.fle/data.db``)::

        db = DatabaseClient()                                   # environment / defaults
        db = DatabaseClient("postgresql://user:pw@host:5432/db") # or a URL
        db = DatabaseClient(max_connections=10, connection_timeout=30)

    The schema is migrated on open (under a cross-process lock) unless ``auto_migrate=False``.
    Use as a context manager, or call :meth:`close`, to release connections.

    Raises:
        ConfigurationError: a setting is missing or invalid (the message names it).
        BackendUnavailableError: the database cannot be opened.
        SchemaVersionError: the database was written by a newer fle-db, or by another application.
    """

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self._settings = Settings.resolve(url, **options)
        self._encoder = StateEncoder(self._settings.max_payload_bytes)
        self._cache = BlobCache(self._settings.cache_max_bytes)
        self._decoder = StateDecoder(self._cache)
        self._metrics = Metrics(self._settings.slow_operation_ms)
        self._backend: Backend = open_backend(self._settings)
        self._backups = backup.BackupStore(self._settings)
        self._scheduler: backup.BackupScheduler | None = None
        try:
            if self._settings.read_only:
                status = self._backend.migration_status()
                if not status.up_to_date:
                    raise SchemaVersionError(
                        f"{self._settings.safe_url()} needs migrating ({', '.join(status.pending)}) and was opened "
                        "read-only: run `fle-db migrate` first"
                    )
            elif self._settings.auto_migrate:
                self._backend.migrate()
            if self._settings.backup_interval and not self._settings.read_only:
                self._scheduler = self.backup_scheduler(
                    self._settings.backup_interval, self._settings.backup_keep
                ).start()
        except BaseException:
            self._backend.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def settings(self) -> Settings:
        """The resolved settings (their ``repr`` hides the password)."""
        return self._settings

    def close(self) -> None:
        """Stop automated backups (waiting for one in progress) and release every pooled
        connection. Idempotent. Afterwards every call that needs the database raises
        :class:`~fle_db.errors.ClientClosedError` (the client never reopens by itself)."""
        if self._scheduler is not None:
            self._scheduler.stop()
        self._backend.close()

    def __enter__(self) -> DatabaseClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DatabaseClient({self._settings.safe_url()!r})"

    # -- trajectories ---------------------------------------------------------------------
    @_timed
    def save_trajectory(self, trajectory: Mapping[str, Any] | models.Trajectory) -> str:
        """Create a trajectory, or merge the given keys into the stored one (same ``id``).

        Keys not given keep their stored values, so ``save_trajectory({"id": t, "end_time": ...,
        "total_reward": ...})`` finishes a run. A fork names its origin with
        ``parent_trajectory_id`` and ``parent_step_number``; that lineage cannot change later.
        Idempotent. Returns the id.

        Raises:
            ValidationError: bad field, id or value. NotFoundError: the fork's parent step does
            not exist. DependencyError: the lineage would change or form a cycle.
        """
        record = _validated(models.Trajectory, dict(_as_dict(trajectory, "trajectory")), "trajectory")
        trajectory_id: str = record["id"]
        fields = {k: v for k, v in record.items() if k != "id"}
        self._encode(fields, f"trajectory {trajectory_id!r}")  # reject bad input before the transaction

        def build(stored: tuple[str, bytes]) -> TrajectoryRow:
            old = codec.load(*stored)
            for key in ("parent_trajectory_id", "parent_step_number"):
                if old.get(key) is not None and key in fields and fields[key] != old[key]:
                    raise DependencyError(
                        f"trajectory {trajectory_id!r} was forked from {old.get('parent_trajectory_id')!r} "
                        f"step {old.get('parent_step_number')}; its lineage cannot change"
                    )
            merged = {**old, **fields}
            reward = merged.get("total_reward")
            return TrajectoryRow(
                id=trajectory_id,
                body=self._encode(merged, f"trajectory {trajectory_id!r}"),
                agent_type=merged.get("agent_type"),
                task=merged.get("task"),
                total_reward=float(reward) if reward is not None else None,
                success=merged.get("success"),
                parent_trajectory_id=merged.get("parent_trajectory_id"),
                parent_step_number=merged.get("parent_step_number"),
            )

        self._backend.save_trajectory(trajectory_id, build)
        return trajectory_id

    @_timed
    def load_trajectory(self, trajectory_id: str) -> dict[str, Any]:
        """The trajectory as saved (merged over all saves), with ``id``.

        Raises:
            NotFoundError: no such trajectory. ValidationError: malformed id.
        """
        _check_id(trajectory_id, "trajectory_id")
        stored = self._backend.load_trajectory(trajectory_id)
        if stored is None:
            raise NotFoundError(f"trajectory {trajectory_id!r} does not exist")
        return {"id": trajectory_id, **codec.load(stored.codec, stored.body)}

    @_timed
    def delete_trajectory(self, trajectory_id: str, *, cascade: bool = False) -> list[str]:
        """Delete a trajectory with its steps, outputs, feedbacks, metadata and the game states
        no other step uses, in one transaction. Returns the ids deleted. The rows stay
        restorable (:meth:`restore_to`) for ``pitr_retention``, then :meth:`optimize` prunes them.

        Raises:
            NotFoundError: no such trajectory.
            DependencyError: forks depend on it and ``cascade`` is False. With ``cascade=True``
                the forks (and their forks) are deleted too: **dangerous**.
        """
        _check_id(trajectory_id, "trajectory_id")
        return self._backend.delete_trajectory(trajectory_id, cascade)

    # -- steps and checkpoints ------------------------------------------------------------
    @_timed
    def save_step(
        self,
        step: Mapping[str, Any] | models.Step,
        *,
        agent_output: Mapping[str, Any] | None = None,
        environment_feedback: Mapping[str, Any] | None = None,
        game_state: Mapping[str, Any] | None = None,
        node: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Save one checkpoint (step, and optionally its agent output, environment feedback and
        game state) in one transaction.

        The optional parts may be passed as keyword arguments or as entries of ``step`` under
        the same names. A trajectory not saved yet is created empty. Saving an identical
        checkpoint again is a no-op (``created`` is then False), so a retry after a lost reply is
        safe. ``node`` (``{"tree", "depth", "value", "advantage"}``) makes the step a search-tree
        node in the same transaction (see :meth:`append_step`); a node already stored keeps its
        statistics.

        Returns:
            ``{"trajectory_id", "step_number", "game_state_id", "created"}``; ``game_state_id``
            is None without a game state.

        Raises:
            ValidationError: bad input (nothing written). ConflictError: a different record is
            stored under this ``(trajectory_id, step_number)`` (nothing written).
        """
        node_row = _node_row(node) if node is not None else None
        return self._save(
            lambda pending: [self._checkpoint(step, agent_output, environment_feedback, game_state, pending, node_row)]
        )[0]

    @_timed
    def batch_save_steps(self, steps: Iterable[Mapping[str, Any] | models.Step]) -> list[dict[str, Any]]:
        """Save many checkpoints in one transaction: all of them or none.

        Each element is a step as for :meth:`save_step` (it may carry ``agent_output``,
        ``environment_feedback`` and ``game_state`` entries). Every element is validated before
        anything is written. Idempotent like :meth:`save_step`.

        Returns:
            One id dict per step, in order (see :meth:`save_step`).

        Raises:
            ValidationError: an element is invalid (its index is named). ConflictError: an
            element differs from a stored record.
        """
        records = _as_list(steps, "steps")

        def build(pending: PendingBases) -> list[Checkpoint]:
            checkpoints = []
            for index, step in enumerate(records):
                try:
                    checkpoints.append(self._checkpoint(step, None, None, None, pending))
                except ValidationError as exc:
                    raise type(exc)(f"batch element {index}: {exc}") from None
            return checkpoints

        return self._save(build)

    @_timed
    def load_steps(self, trajectory_id: str, *, with_parts: bool = False) -> list[dict[str, Any]]:
        """All steps of a trajectory in ``step_number`` order, each as saved plus
        ``game_state_id`` (None without a state). ``with_parts=True``: each step also carries
        its ``agent_output`` and ``environment_feedback`` as entries (left out where the step has
        none), as :meth:`save_step` accepts them (without the step's key fields).

        Raises:
            NotFoundError: no such trajectory (a trajectory without steps gives ``[]``).
        """
        _check_id(trajectory_id, "trajectory_id")
        rows = self._backend.load_steps(trajectory_id)
        if not rows:
            self._require_trajectory(trajectory_id)
        parts: dict[str, dict[int, Any]] = {}
        if with_parts:
            for name in ("agent_output", "environment_feedback"):
                records = self._backend.load_step_records(name + "s", trajectory_id)
                parts[name] = {r.step_number: v for r, v in zip(records, self._record_values(records), strict=True)}
        with codec.gc_paused():
            loaded = [
                {
                    "trajectory_id": row.trajectory_id,
                    "step_number": row.step_number,
                    **value,
                    "game_state_id": row.game_state_id,
                }
                for row, value in zip(rows, self._record_values(rows), strict=True)
            ]
        for name, by_number in parts.items():
            for step in loaded:
                if step["step_number"] in by_number:
                    step[name] = by_number[step["step_number"]]
        return loaded

    @_timed
    def load_step(self, trajectory_id: str, step_number: int) -> dict[str, Any]:
        """One step as saved, plus ``game_state_id`` (None without a state).

        Raises:
            NotFoundError: no such step.
        """
        _check_id(trajectory_id, "trajectory_id")
        row = self._backend.load_step(trajectory_id, _check_step_number(step_number))
        if row is None:
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return {
            "trajectory_id": row.trajectory_id,
            "step_number": row.step_number,
            **self._record_values([row])[0],
            "game_state_id": row.game_state_id,
        }

    @_timed
    def load_checkpoint(self, trajectory_id: str, step_number: int) -> dict[str, Any]:
        """One checkpoint as saved: ``{"step", "agent_output", "environment_feedback",
        "game_state"}``, each equal to what :meth:`save_step` was given (parts given as keyword
        arguments or as entries of the step alike; the step with ``game_state_id`` added, the
        parts without the step's key fields); absent parts are None. One query. Read-only.

        Raises:
            NotFoundError: no such step. ValidationError: malformed id or step number.
        """
        _check_id(trajectory_id, "trajectory_id")
        found = self._backend.load_checkpoint(trajectory_id, _check_step_number(step_number))
        if found is None:
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return self._checkpoint_dict(found)

    @_timed
    def load_latest_checkpoint(self, trajectory_id: str) -> dict[str, Any] | None:
        """The newest checkpoint (highest ``step_number``), as :meth:`load_checkpoint` gives it
        (``{"step", "agent_output", "environment_feedback", "game_state"}``), read in one index
        lookup; None when the trajectory has no step (or does not exist): start the run afresh.
        """
        _check_id(trajectory_id, "trajectory_id")
        found = self._backend.load_checkpoint(trajectory_id, None)
        return self._checkpoint_dict(found) if found is not None else None

    @_timed
    def list_trajectories(
        self,
        *,
        task: str | None = None,
        agent_type: str | None = None,
        success: bool | None = None,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        id_contains: str | None = None,
        parent_trajectory_id: str | None = None,
        order_by: str = "start_time",
        descending: bool = True,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page of trajectories: ``{"trajectories": [row, ...], "next_cursor": str | None}``,
        each row ``{"id", "task", "agent_type", "steps", "total_reward", "success",
        "start_time", "end_time", "parent_trajectory_id", "parent_step_number"}`` (missing
        values None; ``start_time`` as saved, else when the trajectory was first saved, ISO 8601).

        Filters (AND): ``task``, ``agent_type``, ``success``, ``since`` / ``until`` (first
        saved at or after / before: aware datetime, ISO 8601 with offset, or epoch seconds),
        ``id_contains`` (case-insensitive), ``parent_trajectory_id`` (its forks). ``order_by``:
        ``id``, ``task``, ``agent_type``, ``steps``, ``total_reward``, ``success``,
        ``start_time`` (first saved) or ``end_time``; missing values last, ties by id.
        Keyset pagination: pass ``next_cursor`` back as ``cursor`` (with the same order and
        filters) for the next page; None on the last page. Read-only.

        Raises:
            ValidationError: a bad filter, order or limit (1..1000), or a cursor that was altered
            or belongs to another order or filters.
        """
        query = listing.build_query(
            task=task, agent_type=agent_type, success=success, since=since, until=until, id_contains=id_contains,
            parent_trajectory_id=parent_trajectory_id, order_by=order_by, descending=descending, limit=limit,
            cursor=cursor,
        )  # fmt: skip
        return listing.page(query, self._backend.list_trajectories, self._backend.trajectory_bodies)

    # -- search trees ---------------------------------------------------------------------
    @_timed
    def fork_trajectory(
        self,
        parent_trajectory_id: str,
        parent_step_number: int,
        trajectory_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Fork a trajectory from any of its steps: a new trajectory (``trajectory_id``, or a
        fresh uuid) whose lineage is that step, with ``fields`` as its other keys. Nothing is
        copied: the fork's steps continue from the fork point (its first step's parent is that
        step; see :meth:`get_lineage`), and a step saved with the parent's game state shares the
        stored state by its content address. Idempotent for the same id and fork point.

        Raises:
            NotFoundError: the fork point does not exist. DependencyError: ``trajectory_id``
            already exists with another lineage. ValidationError: bad id or field.
        """
        _check_id(parent_trajectory_id, "parent_trajectory_id")
        tid = trajectory_id if trajectory_id is not None else f"fork-{uuid.uuid4().hex}"
        self.save_trajectory(
            {
                **fields,
                "id": tid,
                "parent_trajectory_id": parent_trajectory_id,
                "parent_step_number": parent_step_number,
            }
        )
        return tid

    @_timed
    def append_step(
        self,
        trajectory_id: str,
        step: Mapping[str, Any] | None = None,
        *,
        agent_output: Mapping[str, Any] | None = None,
        environment_feedback: Mapping[str, Any] | None = None,
        game_state: Mapping[str, Any] | None = None,
        node: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Append a checkpoint as the next step of a trajectory, numbered by the database: under
        the trajectory's lock, ``step_number`` = highest stored + 1 (0 for the first), so
        concurrent appenders in any process get distinct, gap-free numbers — the monotonic order
        resume reads. ``step`` is a step without ``trajectory_id``/``step_number`` (it may name
        an explicit parent with ``parent_trajectory_id``/``parent_step_number``). ``node``
        (``{"tree": str, "depth": int, "value": float | None, "advantage": float | None}``)
        makes the step a search-tree node in the same transaction, with 0 visits.

        Not idempotent: every call appends a new step (retrying after a lost reply may append
        twice). Returns the ids of :meth:`save_step` plus ``node_id`` (None without a node).

        Raises:
            ValidationError: bad input (nothing written). NotFoundError: never (a missing
            trajectory is created empty). ConflictError: a concurrent delete removed a base.
        """
        _check_id(trajectory_id, "trajectory_id")
        record = dict(_as_dict(step if step is not None else {}, "step"))
        for key in _STEP_KEYS:
            if key in record and not (key == "trajectory_id" and record[key] == trajectory_id):
                raise ValidationError(f"append_step numbers the step itself: do not give {key!r}")
        node_row = _node_row(node) if node is not None else None

        def attempt(pending: PendingBases) -> tuple[SaveResult, int | None]:
            def build(number: int) -> Checkpoint:
                with codec.gc_paused():
                    return self._checkpoint(
                        {**record, "trajectory_id": trajectory_id, "step_number": number},
                        agent_output, environment_feedback, game_state, pending, node_row,
                    )  # fmt: skip

            return self._backend.append_checkpoint(trajectory_id, build)

        pending = PendingBases()
        try:
            result, node_id = attempt(pending)
        except ConflictError:
            # A delta's keyframe was deleted by another process meanwhile: write whole, once.
            self._encoder.forget()
            pending = PendingBases()
            result, node_id = attempt(pending)
        self._encoder.committed(pending)
        return {**_ids(result), "node_id": node_id}

    @_timed
    def get_search_node(self, node_id: int | None = None, *, trajectory_id: str | None = None,
                        step_number: int | None = None) -> dict[str, Any]:  # fmt: skip
        """A search-tree node by ``node_id``, or by its step (``trajectory_id`` + ``step_number``):
        ``{"node_id", "trajectory_id", "step_number", "tree", "depth", "visits", "value",
        "advantage", "game_state_id", "parent_node_id", "parent_trajectory_id",
        "parent_step_number", "created_at", "updated_at"}`` (times: epoch microseconds).

        Raises:
            NotFoundError: no such node. ValidationError: neither or both ways given.
        """
        if (node_id is None) == (trajectory_id is None):
            raise ValidationError("get_search_node: give node_id, or trajectory_id and step_number")
        if node_id is not None:
            found = self._backend.load_node(node_id=_check_node_id(node_id))
        else:
            _check_id(trajectory_id, "trajectory_id")
            found = self._backend.load_node(step=(str(trajectory_id), _check_step_number(step_number)))
        if found is None:
            where = f"{node_id}" if node_id is not None else f"at step {step_number} of {trajectory_id!r}"
            raise NotFoundError(f"search node {where} does not exist")
        return _node_dict(found)

    @_timed
    def get_search_nodes(
        self,
        tree: str,
        *,
        order: str = "value",
        limit: int | None = None,
        with_state: bool = False,
        with_value: bool = False,
        with_advantage: bool = False,
        trajectory_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Nodes of a tree (and of one trajectory, if given), ``order="value"`` (highest first;
        nodes without a value last), ``"recent"`` (newest first, by the monotonic node id) or
        ``"step"`` (highest step number first), at most ``limit``, optionally only those whose
        step has a game state / a value / an advantage. One indexed query."""
        _check_id(tree, "tree")
        if trajectory_id is not None:
            _check_id(trajectory_id, "trajectory_id")
        if order not in ("value", "recent", "step"):
            raise ValidationError(f"order must be 'value', 'recent' or 'step', got {order!r}")
        query = NodeQuery(tree, order=order, limit=_check_count(limit, "limit"), with_state=with_state,
                          with_value=with_value, with_advantage=with_advantage,
                          trajectory_id=trajectory_id)  # fmt: skip
        return [_node_dict(node) for node in self._backend.find_nodes(query)]

    @_timed
    def get_best_per_depth(self, tree: str, n: int = 1, *, with_state: bool = False) -> list[dict[str, Any]]:
        """The ``n`` highest-value nodes of each depth of a tree (nodes without a value are not
        ranked), by depth then value (ties: the older node first). One query over
        ``ix_search_nodes_tree``."""
        _check_id(tree, "tree")
        query = NodeQuery(tree, per_depth=_check_count(n, "n"), with_state=with_state)
        return [_node_dict(node) for node in self._backend.find_nodes(query)]

    @_timed
    def get_lineage(self, trajectory_id: str, step_number: int) -> list[dict[str, Any]]:
        """The path from the root to this step, root first, as ``[{"trajectory_id",
        "step_number"}]``, across forks: a step's parent is its explicit parent step, else the
        previous step of its trajectory, else (a fork's first step) the fork point. One
        recursive query.

        Raises:
            NotFoundError: the step does not exist.
        """
        _check_id(trajectory_id, "trajectory_id")
        path = self._backend.lineage(trajectory_id, _check_step_number(step_number))
        return [{"trajectory_id": tid, "step_number": number} for tid, number in path]

    @_timed
    def get_children(self, trajectory_id: str, step_number: int) -> list[dict[str, Any]]:
        """The steps whose parent (as in :meth:`get_lineage`) is this step, as
        ``[{"trajectory_id", "step_number"}]`` sorted; ``[]`` for a leaf.

        Raises:
            NotFoundError: the step does not exist.
        """
        _check_id(trajectory_id, "trajectory_id")
        number = _check_step_number(step_number)
        found = self._backend.children(trajectory_id, number)
        if not found and self._backend.load_step(trajectory_id, number) is None:
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return [{"trajectory_id": tid, "step_number": n} for tid, n in found]

    @_timed
    def update_search_stats(
        self,
        node_id: int,
        *,
        add_visits: int = 0,
        add_value: float = 0.0,
        value: float | None = None,
        advantage: float | None = None,
        visits: int | None = None,
    ) -> dict[str, Any]:
        """Atomically change a node's statistics in one UPDATE — add ``add_visits`` and
        ``add_value`` (increments computed by the database: concurrent updates never lose one),
        or set ``visits`` / ``value`` / ``advantage`` — and return the node after it. Not idempotent for
        increments (a retry adds twice), so it is never retried automatically.

        Raises:
            NotFoundError: no such node. ValidationError: bad number, or both value forms.
        """
        if value is not None and add_value:
            raise ValidationError("update_search_stats: give add_value or value, not both")
        if visits is not None and add_visits:
            raise ValidationError("update_search_stats: give add_visits or visits, not both")
        if isinstance(add_visits, bool) or not isinstance(add_visits, int):
            raise ValidationError(f"add_visits must be an integer, got {add_visits!r}")
        node = self._backend.bump_search_stats(
            _check_node_id(node_id),
            add_visits,
            _check_float(add_value, "add_value") or 0.0,
            _check_float(value, "value"),
            _check_float(advantage, "advantage"),
            _check_count(visits, "visits"),
        )
        return _node_dict(node)

    @_timed
    def visit_search_node(self, node_id: int, children: int = 1) -> dict[str, Any]:
        """FLE's sampler ``visit``, in one transaction: add ``children`` visits to the node, and
        set each child node's advantage to its value minus the mean of its siblings' values.
        Returns the node after it.

        Raises:
            NotFoundError: no such node.
        """
        return _node_dict(self._backend.visit(_check_node_id(node_id), _check_count(children, "children") or 0))

    # -- game states ----------------------------------------------------------------------
    @_timed
    def save_game_state(self, state: Mapping[str, Any]) -> str:
        """Store a game state (any JSON object); returns its id, the digest of its content.

        Equal states get the same id and are stored once, so saving again is a no-op.

        Raises:
            ValidationError: not a JSON object, or not exactly representable as JSON.
        """
        encoded = self._encoder.encode(state, "game_state", None, PendingBases())
        self._backend.save_game_state(encoded)
        return encoded.id

    @_timed
    def load_game_state(self, state_id: str) -> dict[str, Any]:
        """The game state with this id, equal to what was saved.

        Raises:
            NotFoundError: no such state. DataIntegrityError: the stored bytes are corrupt.
        """
        _check_id(state_id, "state_id")
        stored = self._backend.load_game_state(state_id)
        if stored is None:
            raise NotFoundError(f"game state {state_id!r} does not exist")
        return self._decode_state(stored)

    @_timed
    def load_game_states(self, state_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Many game states at once (e.g. every state of a trajectory, from ``load_steps``), as
        ``{state_id: state}``: one query per 500 ids, shared parts decoded once.

        Raises:
            NotFoundError: an id does not exist (the message names it). DataIntegrityError:
            stored bytes are corrupt. ValidationError: a malformed id.
        """
        wanted = list(dict.fromkeys(_check_ids(state_ids, "state_ids")))
        stored = self._backend.load_game_states(wanted)
        missing = [sid for sid in wanted if sid not in stored]
        if missing:
            raise NotFoundError(f"game state(s) {', '.join(map(repr, missing[:5]))} do not exist")
        with codec.gc_paused():
            return {sid: self._decode_state(stored[sid]) for sid in wanted}

    # -- agent outputs, environment feedbacks ---------------------------------------------
    @_timed
    def save_agent_output(self, output: Mapping[str, Any] | models.AgentOutput) -> dict[str, Any]:
        """Save the agent's output for one step (``trajectory_id``, ``step_number`` + any JSON).
        Idempotent; ConflictError if a different output is stored for that step."""
        return self._save_step_record("agent_output", models.AgentOutput, output)

    @_timed
    def save_environment_feedback(self, feedback: Mapping[str, Any] | models.EnvironmentFeedback) -> dict[str, Any]:
        """Save the environment's feedback for one step; same rules as :meth:`save_agent_output`."""
        return self._save_step_record("environment_feedback", models.EnvironmentFeedback, feedback)

    @_timed
    def load_agent_outputs(self, trajectory_id: str) -> list[dict[str, Any]]:
        """A trajectory's agent outputs in step order. Raises NotFoundError for an unknown trajectory."""
        return self._load_step_records("agent_outputs", trajectory_id)

    @_timed
    def load_environment_feedbacks(self, trajectory_id: str) -> list[dict[str, Any]]:
        """A trajectory's environment feedbacks in step order. Raises NotFoundError for an unknown trajectory."""
        return self._load_step_records("environment_feedbacks", trajectory_id)

    # -- metadata -------------------------------------------------------------------------
    @_timed
    def save_metadata(self, trajectory_id: str, key: str, value: Any) -> None:
        """Set one metadata key of a trajectory to any JSON value (overwrites; idempotent).
        A trajectory not saved yet is created empty."""
        _check_id(trajectory_id, "trajectory_id")
        _check_id(key, "metadata key")
        self._backend.save_metadata(trajectory_id, key, self._encode(value, f"metadata {key!r}"))

    @_timed
    def load_metadata(self, trajectory_id: str) -> dict[str, Any]:
        """All metadata of a trajectory as ``{key: value}``. Raises NotFoundError for an unknown trajectory."""
        _check_id(trajectory_id, "trajectory_id")
        rows = self._backend.load_metadata(trajectory_id)
        if not rows:
            self._require_trajectory(trajectory_id)
        return {str(row.key): codec.load(row.codec, row.body) for row in rows}

    # -- read-only SQL --------------------------------------------------------------------
    @_timed
    def execute_query(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run one read-only SQL statement (a SELECT) and return its rows as dicts.

        Parameters are always bound, never interpolated: write ``%s`` placeholders with a list or
        tuple of values (``None``, bool, int, float, str), on every backend; ``%%`` is a literal
        ``%`` when there are parameters (without parameters the text is sent as is). Reading is
        all a query can do (see the README's Security section): SQLite runs it with
        ``query_only`` and an authorizer allowing reads only; PostgreSQL and MySQL as a separate
        SELECT-only login (``read_only_url``, else the login migration ``0007_read_only_login``
        derives), on a connection opened for this call and closed after it, in a READ ONLY
        transaction. Idempotent.

        Raises:
            ValidationError: the query or a parameter has a wrong type or a NUL byte, or the
                statement writes, is not exactly one statement, or fails.
            QueryTimeoutError: it ran longer than ``query_timeout`` seconds (default 5).
            QueryLimitError: it returns more than ``query_max_rows`` rows (nothing is returned;
                results are never truncated).
            ConfigurationError: (PostgreSQL, MySQL) the SELECT-only login is missing or refused
                (the message names the GRANTs to run), or it holds more than SELECT.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValidationError(f"query must be a non-empty string, got {query!r:.80}")
        if "\x00" in query:
            raise ValidationError("query contains a NUL byte")
        return self._backend.read_only_query(query, _query_params(params))

    # -- export and import ----------------------------------------------------------------
    @_timed
    def export_data(
        self,
        path: str | os.PathLike[str],
        format: str = "jsonl",
        *,
        trajectory_ids: Iterable[str] | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write the selected trajectories — with steps, agent outputs, feedbacks, game states and
        metadata — to ``path``, streaming (memory is bounded by bytes, not by the data: see
        ``fle_db.ops.export``).

        ``format``: ``"jsonl"`` (importable with :meth:`import_data`; zstd-compressed when
        ``path`` ends in ``.zst``), ``"chat"`` (one OpenAI-style conversation per trajectory, for
        fine-tuning) or ``"parquet"`` (one row per step; needs ``pip install 'fle-db[parquet]'``);
        ``fle_db.ops.export`` documents each layout. Filters (AND): ``trajectory_ids``,
        ``task``, ``agent_type``, and ``since`` / ``until`` on when the trajectory was first
        saved into this database (aware datetime, ISO 8601 with offset, or epoch seconds;
        ``since`` inclusive, ``until`` exclusive). Parents come before their forks. The file is
        written to a temporary name (owner-only) and renamed over ``path`` when complete;
        ``progress(trajectories_done, 0)`` is called after each trajectory. Read-only.

        Returns ``{"path", "format", "trajectories", "checkpoints", "skipped", "bytes", "seconds"}``.

        Raises:
            ValidationError: unknown format, bad filter. ConfigurationError: ``parquet`` without
            pyarrow. Database errors propagate and leave no file.
        """
        ids = _check_ids(trajectory_ids, "trajectory_ids") if trajectory_ids is not None else None
        criteria = TrajectoryFilter(
            ids,
            _check_text(task, "task"),
            _check_text(agent_type, "agent_type"),
            export.instant_us(since, "since"),
            export.instant_us(until, "until"),
        )
        return export.export_data(
            self,
            self._backend.iter_selected_trajectories(criteria),
            path,
            format,
            criteria,
            _check_callback(progress),
        )

    @_timed
    def import_data(
        self, path: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """Import a ``jsonl`` export (plain or ``.zst``) through the validated save paths.

        Idempotent: importing a file again writes nothing and counts everything as present.
        The unit is a trajectory: its lines are verified (digest, count, shapes) before any of
        it is written; anything stored under its id that differs from the file raises
        ConflictError before any of it is written (never overwritten); a new trajectory whose
        writes fail is removed again. Trajectories before a failing one stay imported.
        ``progress(trajectories_done, file_bytes_read)`` is called after each trajectory.

        Returns ``{"trajectories": {"created", "updated", "unchanged"}, "steps",
        "agent_outputs", "environment_feedbacks", "metadata": {"created", "present"},
        "seconds"}``.

        Raises:
            NotFoundError: no file at ``path``.
            ValidationError: not an fle-db export or a malformed record (a record must name its
            line's trajectory and step: an import never writes into another). SchemaVersionError: an
            unknown format version. DataIntegrityError: truncated, altered or corrupted file.
            ConflictError: the file disagrees with stored data. NotFoundError: a fork's parent
            step is missing.
        """
        return importing.import_data(self, path, _check_callback(progress))

    # -- maintenance ----------------------------------------------------------------------
    @_timed
    def cleanup(
        self,
        older_than: timedelta | float | None = None,
        *,
        before: datetime | str | None = None,
        trajectory_ids: Iterable[str] | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        keep_best_per_task: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Delete old or unwanted trajectories, lineage-aware, in one transaction.

        Selects the trajectories matching EVERY criterion given: no activity (trajectory or
        step written) for ``older_than`` (a ``timedelta`` or seconds) or since ``before`` (an
        aware datetime or ISO 8601 string), the ids ``trajectory_ids``, ``task``,
        ``agent_type``, and with ``keep_best_per_task=N`` all but the N highest
        ``total_reward`` of each task. A selected trajectory that a surviving one forks from is
        kept (``kept_for_lineage``), so no fork ever points at a deleted step. States and blobs
        nothing else uses go too. ``dry_run=True`` does the same work and rolls it back: the
        report (``trajectories`` deleted, ``kept_for_lineage``, ``rows`` deleted per table,
        payload ``bytes_freed``) is exact. The deleted rows stay restorable (:meth:`restore_to`)
        until ``pitr_retention`` has passed and :meth:`optimize` prunes them; space returns to the
        filesystem only after that, with ``optimize(vacuum=True)`` (SQLite) or VACUUM FULL.

        Raises:
            ValidationError: no criterion, or a bad one (both ``older_than`` and ``before``...).
        """
        if older_than is not None and before is not None:
            raise ValidationError("cleanup: give older_than or before, not both")
        cutoff = _cutoff_us(older_than, before)
        ids = _check_ids(trajectory_ids, "trajectory_ids") if trajectory_ids is not None else None
        keep = _check_count(keep_best_per_task, "keep_best_per_task")
        criteria = CleanupCriteria(cutoff, ids, _check_text(task, "task"), _check_text(agent_type, "agent_type"), keep)
        if criteria == CleanupCriteria():
            raise ValidationError("cleanup needs at least one criterion (it never deletes everything by default)")
        return self._backend.cleanup(criteria, dry_run)

    @_timed
    def optimize(self, *, vacuum: bool = False, reindex: bool = False) -> dict[str, Any]:
        """The maintenance each backend needs, with a report ``{"actions": [{"action", "ms"}],
        "size_before", "size_after"}``.

        First, point-in-time history older than ``pitr_retention`` is pruned
        (``history_pruned``: rows per table). SQLite: ANALYZE, then ``wal_checkpoint(TRUNCATE)``
        (the WAL shrinks to zero bytes);
        PostgreSQL: ANALYZE of fle-db's tables. ``vacuum=True`` also rewrites the database to
        return free pages to the filesystem (after :meth:`cleanup`; it needs free disk space of
        about the database's size and blocks writers meanwhile); ``reindex=True`` rebuilds the
        indexes (PostgreSQL: concurrently). Safe to run at any time; idempotent.
        """
        before = self._backend.statistics()["size"]
        cutoff = time.time_ns() // 1000 - int(self._settings.pitr_retention * 1_000_000)
        pruned = self._backend.prune_history(cutoff)
        actions = self._backend.maintain(vacuum, reindex)
        return {
            "actions": actions,
            "history_pruned": pruned,
            "size_before": before,
            "size_after": self._backend.statistics()["size"],
        }

    @_timed
    def validate(self, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
        """Check everything: structure (SQLite ``integrity_check`` and ``foreign_key_check``,
        PostgreSQL ``amcheck`` where installed), every blob's checksum and digest, every state's
        parts, every step, output and feedback, lineage references, step numbering.

        Returns ``{"ok": bool, "problems": [{"severity", "kind", "where", "detail"}], "checked":
        {...}}``; ``ok`` is False when any problem is an error (gaps in step numbering are
        warnings, as are blobs nothing uses). Read-only; reads the whole database in chunks, so
        it takes time on large ones: ``progress(stage, done)`` is called along the way.
        """
        decoder = StateDecoder(BlobCache(16 * 1024 * 1024))  # its own cache: verify, don't trust
        return validate_database(self._backend, decoder, self._record_values, _check_callback(progress))

    # -- monitoring -----------------------------------------------------------------------
    @_timed
    def get_statistics(self) -> dict[str, Any]:
        """What the database holds, read cheaply (no scan of payload tables):

        ``trajectories``, ``steps``, ``game_states``, ``agent_outputs``,
        ``environment_feedbacks``, ``blobs`` (row counts; PostgreSQL estimates tables over 50,000
        rows, and ``exact_counts`` is then False), ``size`` (bytes: the SQLite file and its WAL,
        or fle-db's PostgreSQL tables), ``tables`` (bytes per table with its indexes),
        ``game_state_bytes`` (``raw``: the states' JSON as saved; ``stored``: what the engine
        keeps; ``ratio``), ``oldest_step_at`` / ``newest_step_at`` (ISO 8601 UTC, None if empty).
        """
        stats = self._backend.statistics()
        state_bytes = stats["game_state_bytes"]
        state_bytes["ratio"] = state_bytes["stored"] / state_bytes["raw"] if state_bytes["raw"] else None
        for key in ("oldest_step", "newest_step"):
            micros = stats.pop(f"{key}_us")
            stats[f"{key}_at"] = datetime.fromtimestamp(micros / 1e6, UTC).isoformat() if micros is not None else None
        return {"backend": self._settings.backend, **stats}

    @_timed
    def health_check(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "failing", "checks": {...}}``: the worst of the
        checks, each with a status and a detail — connectivity, schema up to date, a write-and-
        read probe that leaves no trace, pool saturation, and per backend disk space and WAL size
        (SQLite) or server connection limits and replication/standby (PostgreSQL). Never raises
        for an unhealthy database: that is what ``failing`` reports."""
        checks = self._backend.health_checks()
        worst = max((c["status"] for c in checks.values()), key=_SEVERITY.index)
        return {"status": worst, "backend": self._settings.backend, "checks": checks}

    def get_performance_metrics(self) -> dict[str, Any]:
        """This client's view of performance since it opened:

        ``avg_query_time`` (seconds, over every timed call), ``connection_count`` (open pooled
        connections), ``operations`` (per public method: count, errors, avg/p50/p95/p99/max
        ms over its latest 2048 calls), ``pool`` (``in_use``, ``idle``, ``max``), ``cache``
        (decoded-blob cache hits, misses, entries, bytes), ``slow_operations`` (the latest 100
        calls of at least ``slow_operation_ms``). Read-only; touches no database.
        """
        pool = self._backend.pool_status()
        return {
            **self._metrics.snapshot(),
            "connection_count": pool["in_use"] + pool["idle"],
            "pool": pool,
            "cache": self._cache.stats(),
        }

    # -- backups and point-in-time recovery -------------------------------------------------
    @_timed
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

    def list_backups(self) -> list[dict[str, Any]]:
        """The complete backups in ``backup_dir``, oldest first, each a dict with ``id``,
        ``timestamp`` (ISO 8601 UTC), ``size`` (bytes), ``backend``, ``schema_version``,
        ``verified``, ``path``, ``rows`` (per table) and ``commit`` (``seq``, ``committed_at``).
        Read-only."""
        return self._backups.entries()

    def verify_backup(self, backup_id: str) -> dict[str, Any]:
        """Re-check a backup fully: SHA-256 against its manifest, ``integrity_check`` and a
        full validation of a working copy. Read-only.

        Raises:
            NotFoundError: no such backup. DataIntegrityError: it is damaged (says how).
        """
        return self._backups.verify(backup_id)

    @_timed
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

    def prune_backups(self, keep: int | None = None, older_than: float | None = None) -> list[str]:
        """Delete backups beyond the ``keep`` newest and those older than ``older_than``
        seconds (the newest is always kept); returns the ids deleted. Idempotent."""
        return self._backups.prune(keep, older_than)

    @_timed
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
        point-in-time history; ``start()`` runs that in a daemon thread until ``stop()``. Opening
        a client with ``backup_interval`` does this for you."""
        return backup.BackupScheduler(self._backups, self._backend, interval, keep)

    def recovery_window(self) -> dict[str, Any]:
        """``{"from", "to"}`` (ISO 8601 UTC): the instants :meth:`restore_to` can reach, with
        ``from_seq``/``to_seq``, the commit numbers. Read-only."""
        horizon, latest = self._backend.recovery_window()
        return {
            "from": _iso_us(horizon.committed_at),
            "to": _iso_us(latest.committed_at),
            "from_seq": horizon.seq,
            "to_seq": latest.seq,
        }

    def copy_to(self, target: str, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        """Copy the whole database (history included) into ``target``: a new SQLite path or the
        URL of an empty database of any backend, in one consistent snapshot and one target
        transaction. ``progress(table, rows_written, table_total)`` is called per chunk.

        Raises:
            ConflictError: ``target`` is not empty.
        """
        progress = _check_callback(progress)
        with backup.open_database(self._settings, target) as destination:
            return backup.copy_database(self._backend, destination, progress=progress)

    # -- migrations -----------------------------------------------------------------------
    def migrate(self) -> list[str]:
        """Apply pending schema migrations (under a cross-process lock); returns the revisions
        applied, empty if the schema was current. Idempotent."""
        return self._backend.migrate()

    def get_migration_status(self) -> dict[str, Any]:
        """``{"current_version", "latest_version", "pending", "up_to_date"}``; read-only."""
        return self._backend.migration_status().as_dict()

    # -- internals ------------------------------------------------------------------------
    def _encode(self, value: Any, what: str) -> Blob:
        raw = codec.canonical_json(value, what, self._settings.max_payload_bytes)
        tag, body = codec.pack(raw)
        return Blob(tag, body, codec.digest(raw))

    def _save(self, build: Callable[[PendingBases], list[Checkpoint]]) -> list[dict[str, Any]]:
        """Encode with ``build`` and write in one transaction; adopt new keyframes on commit.

        A delta names a keyframe this process remembers; if another process deleted it since,
        the write fails on the foreign key: forget the keyframes and write once more, whole.
        """
        pending = PendingBases()
        with codec.gc_paused():  # encoding allocates many short-lived objects, no cycles
            checkpoints = build(pending)
        try:
            results = self._backend.save_checkpoints(checkpoints)
        except ConflictError:
            if not any(_has_delta(cp) for cp in checkpoints):
                raise
            self._encoder.forget()
            pending = PendingBases()
            checkpoints = build(pending)
            results = self._backend.save_checkpoints(checkpoints)
        self._encoder.committed(pending)
        return [_ids(result) for result in results]

    def _save_step_record(self, part: str, model: type[M], record: Any) -> dict[str, Any]:
        """Save a standalone agent output or environment feedback (``part``) in its own transaction."""
        data = _validated(model, dict(_as_dict(record, part)), part)
        tid, number = data["trajectory_id"], data["step_number"]

        def build(pending: PendingBases) -> list[Checkpoint]:
            encoded = self._encoder.encode_record(part + "s", tid, number, _body(data), part, pending)
            if part == "agent_output":
                return [Checkpoint(tid, number, agent_output=encoded)]
            return [Checkpoint(tid, number, environment_feedback=encoded)]

        return self._save(build)[0]

    def _record_values(self, rows: list[StoredStep]) -> list[Any]:
        """Decode step-scoped rows of one trajectory and table (see :meth:`_iter_record_values`)."""
        return list(self._iter_record_values(rows))

    def _iter_record_values(self, rows: list[StoredStep]) -> Iterator[Any]:
        """Decode step-scoped rows of one trajectory and table, one at a time; a delta's keyframe
        is either in ``rows`` (whole-trajectory loads) or attached to the row (resume, export
        pages). A keyframe's raw bytes are kept only while a later row still needs them."""
        by_number = {row.step_number: row for row in rows}
        uses = Counter(row.base_step_number for row in rows if row.base_step_number is not None)
        raw: dict[int, bytes] = {}
        for row in rows:
            value = orjson.loads(self._record_raw(row, by_number, raw, uses))
            if row.base_step_number is not None:
                uses[row.base_step_number] -= 1
                if not uses[row.base_step_number]:
                    raw.pop(row.base_step_number, None)
            yield value

    def _record_raw(
        self, row: StoredStep, by_number: dict[int, StoredStep], raw: dict[int, bytes], uses: Counter[int]
    ) -> bytes:
        """The verified raw bytes of ``row``, kept in ``raw`` while ``uses`` counts later deltas
        of it. (A method, not a recursive closure: that would be a reference cycle holding every
        row until the cyclic collector runs, which export pauses.)"""
        got = raw.get(row.step_number)
        if got is None:
            base = None
            if row.base_step_number is not None:
                base_row = row.base or by_number.get(row.base_step_number)
                if base_row is None:
                    raise DataIntegrityError(
                        f"record {row.step_number} of {row.trajectory_id!r} is a delta of missing "
                        f"record {row.base_step_number}"
                    )
                base = self._record_raw(base_row, by_number, raw, uses)
            got = self._decoder.record(row.codec, row.body, row.digest, base)
            if uses[row.step_number]:
                raw[row.step_number] = got
        return got

    def _checkpoint_dict(self, found: StoredCheckpoint) -> dict[str, Any]:
        row = found.step
        step = {
            "trajectory_id": row.trajectory_id,
            "step_number": row.step_number,
            **self._record_values([row])[0],
            "game_state_id": row.game_state_id,
        }
        output, feedback = (self._record_values([r])[0] if r is not None else None
                            for r in (found.agent_output, found.environment_feedback))  # fmt: skip
        state = self._decode_state(found.game_state) if found.game_state is not None else None
        return {"step": step, "agent_output": output, "environment_feedback": feedback, "game_state": state}

    def _decode_state(self, stored: StoredState) -> dict[str, Any]:
        state: dict[str, Any] = self._decoder.state(stored.id, stored.codec, stored.body, stored.parts)
        return state

    def _checkpoint(
        self,
        step: Mapping[str, Any] | models.Step,
        agent_output: Mapping[str, Any] | None,
        environment_feedback: Mapping[str, Any] | None,
        game_state: Mapping[str, Any] | None,
        pending: PendingBases,
        node: NodeRow | None = None,
    ) -> Checkpoint:
        given = {"agent_output": agent_output, "environment_feedback": environment_feedback, "game_state": game_state}
        record = dict(_as_dict(step, "step"))
        for name in _ENTRIES:
            if name in record:
                if given[name] is not None:
                    raise ValidationError(f"step: {name} was given both as an entry and as an argument")
                given[name] = record.pop(name)
        record = _validated(models.Step, record, "step")
        tid, number = record["trajectory_id"], record["step_number"]
        what = f"step {number} of trajectory {tid!r}"
        reward = record.get("reward")
        parent_step = record.get("parent_step_number")
        step_row = StepRow(
            body=self._encoder.encode_record("steps", tid, number, _body(record), what, pending),
            reward=float(reward) if reward is not None else None,
            parent_trajectory_id=record.get("parent_trajectory_id") or (tid if parent_step is not None else None),
            parent_step_number=parent_step,
        )
        parts: dict[str, EncodedRecord | None] = {}
        for name, model, kind in (
            ("agent_output", models.AgentOutput, "agent_outputs"),
            ("environment_feedback", models.EnvironmentFeedback, "environment_feedbacks"),
        ):
            part = given[name]
            if part is None:
                parts[name] = None
                continue
            rec = dict(_as_dict(part, name))
            for key, value in zip(_STEP_KEYS, (tid, number), strict=True):
                if rec.setdefault(key, value) != value:
                    raise ValidationError(f"{what}: {name}[{key!r}] is {rec[key]!r}, not {value!r}")
            parts[name] = self._encoder.encode_record(
                kind, tid, number, _body(_validated(model, rec, name)), f"{name} of {what}", pending
            )
        state = given["game_state"]
        return Checkpoint(
            tid,
            number,
            step=step_row,
            agent_output=parts["agent_output"],
            environment_feedback=parts["environment_feedback"],
            game_state=self._encoder.encode(state, f"game_state of {what}", tid, pending)
            if state is not None
            else None,
            node=node,
        )

    def _load_step_records(self, kind: str, trajectory_id: str) -> list[dict[str, Any]]:
        _check_id(trajectory_id, "trajectory_id")
        rows = self._backend.load_step_records(kind, trajectory_id)
        if not rows:
            self._require_trajectory(trajectory_id)
        return [
            {"trajectory_id": row.trajectory_id, "step_number": row.step_number, **value}
            for row, value in zip(rows, self._record_values(rows), strict=True)
        ]

    def _require_trajectory(self, trajectory_id: str) -> None:
        if not self._backend.trajectory_exists(trajectory_id):
            raise NotFoundError(f"trajectory {trajectory_id!r} does not exist")


def _iso_us(at_us: int) -> str:
    return datetime.fromtimestamp(at_us / 1_000_000, UTC).isoformat()


def _cutoff_us(older_than: timedelta | float | None, before: datetime | str | None) -> int | None:
    """The cleanup cutoff in epoch microseconds, from a duration or an instant."""
    if older_than is not None:
        if isinstance(older_than, bool) or not isinstance(older_than, (timedelta, int, float)):
            raise ValidationError(f"older_than must be a timedelta or seconds, got {older_than!r}")
        seconds = older_than.total_seconds() if isinstance(older_than, timedelta) else float(older_than)
        if not 0 <= seconds < float("inf"):
            raise ValidationError(f"older_than must be a positive duration, got {older_than!r}")
        if seconds > time.time():
            raise ValidationError(f"older_than {older_than!r} reaches back before 1970")
        return int((time.time() - seconds) * 1_000_000)
    if before is None:
        return None
    if isinstance(before, str):
        try:
            before = datetime.fromisoformat(before)
        except ValueError:
            raise ValidationError(f"before is not an ISO 8601 time: {before!r}") from None
    if not isinstance(before, datetime) or before.tzinfo is None:
        raise ValidationError("before must be a timezone-aware datetime or an ISO 8601 string with an offset")
    try:
        return int(before.timestamp() * 1_000_000)
    except (OverflowError, ValueError):  # beyond the ends of the datetime range once in UTC
        raise ValidationError(f"before is outside the range of times: {before.isoformat()}") from None


def _node_row(node: Mapping[str, Any]) -> NodeRow:
    """Validate a node description: ``tree`` (an id), ``depth`` (int >= 0), optional ``value``
    and ``advantage`` (finite numbers)."""
    if not isinstance(node, Mapping):
        raise ValidationError(f"node must be a dict, got {type(node).__name__}")
    unknown = set(node) - {"tree", "depth", "value", "advantage"}
    if unknown:
        raise ValidationError(f"node: unknown keys {sorted(unknown)}")
    _check_id(node.get("tree"), "node['tree']")
    return NodeRow(
        tree=node["tree"],
        depth=_check_step_number(node.get("depth"), "node['depth']"),
        value=_check_float(node.get("value"), "node['value']"),
        advantage=_check_float(node.get("advantage"), "node['advantage']"),
    )


def _check_step_number(value: Any, what: str = "step_number") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValidationError(f"{what} must be an integer in 0 .. 2**63-1, got {value!r:.80}")
    return value


def _check_node_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise ValidationError(f"node_id must be a positive integer, got {value!r:.80}")
    return value


def _check_count(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValidationError(f"{what} must be an integer in 0 .. 2**63-1, got {value!r:.80}")
    return value


def _check_text(value: Any, what: str) -> str | None:
    """A filter value: None or a string without NUL characters or lone surrogates."""
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
        raise ValidationError(f"{what} must be a string without NUL characters, got {value!r:.80}")
    return value


def _check_float(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(f"{what} must be a finite number, got {value!r:.80}")
    return float(value)


def _node_dict(node: StoredNode) -> dict[str, Any]:
    return {
        "node_id": node.id,
        "trajectory_id": node.trajectory_id,
        "step_number": node.step_number,
        "tree": node.tree,
        "depth": node.depth,
        "visits": node.visits,
        "value": node.value,
        "advantage": node.advantage,
        "game_state_id": node.game_state_id,
        "parent_node_id": node.parent_id,
        "parent_trajectory_id": node.parent_trajectory_id,
        "parent_step_number": node.parent_step_number,
        "created_at": node.created_at,
        "updated_at": node.updated_at,
    }


#: Range of an integer query parameter: what every backend stores (SQLite's and BIGINT's).
_INT64 = (-(2**63), 2**63 - 1)


def _query_params(params: Any) -> tuple[Any, ...]:
    """``execute_query``'s parameters as a tuple of scalars every backend binds alike."""
    if params is None:
        return ()
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Sequence):
        raise ValidationError(f"params must be a list or tuple of values, got {type(params).__name__}")
    for value in params:
        if isinstance(value, bool) or value is None or isinstance(value, float):
            continue
        if isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                raise ValidationError(f"an integer parameter must fit in 64 bits, got {value}")
        elif isinstance(value, str):
            if "\x00" in value:
                raise ValidationError("a string parameter contains a NUL byte")
        else:
            raise ValidationError(f"a parameter must be None, bool, int, float or str, got {type(value).__name__}")
    return tuple(params)


def _check_id(value: Any, what: str) -> None:
    if not isinstance(value, str) or not _ID.fullmatch(value):  # match() lets '$' accept a final newline
        raise ValidationError(f"{what} must be 1-200 characters of letters, digits and _ . : - ; got {value!r:.80}")


def _check_callback(progress: C | None) -> C | None:
    """A progress callback must be callable (or None): checked before any work starts."""
    if progress is not None and not callable(progress):
        raise ValidationError(f"progress must be a function or None, got {type(progress).__name__}")
    return progress


def _as_list(values: Any, what: str) -> list[Any]:
    """A list from any iterable but a string, bytes or mapping: a bare string would be read as
    its characters (``"12"`` as the ids ``"1"`` and ``"2"``), a dict as its keys."""
    if isinstance(values, (str, bytes, bytearray, Mapping)) or not isinstance(values, Iterable):
        raise ValidationError(f"{what} must be a list, got {type(values).__name__} {values!r:.80}")
    return list(values)


def _check_ids(values: Any, what: str) -> tuple[str, ...]:
    """A list of valid ids (see :func:`_as_list`)."""
    ids = tuple(_as_list(values, what))
    for value in ids:
        _check_id(value, what)
    return ids


def _as_dict(record: Any, what: str) -> Mapping[str, Any]:
    if isinstance(record, pydantic.BaseModel):
        return record.model_dump(exclude_unset=True)
    if not isinstance(record, Mapping):
        raise ValidationError(f"{what} must be a dict, got {type(record).__name__}")
    return record


def _validated(model: type[M], record: Any, what: str) -> dict[str, Any]:
    """Check the known fields of ``record`` strictly; return it as a plain dict, keys as given
    (a new dict unless ``record`` already is a plain dict the caller owns)."""
    data = record if type(record) is dict else dict(_as_dict(record, what))
    try:
        model.__pydantic_validator__.validate_python(data)
    except pydantic.ValidationError as exc:
        raise ValidationError(validation_message(model, data, exc)) from None
    return data


def _body(record: Mapping[str, Any]) -> dict[str, Any]:
    """The keys stored in the payload: all but the key columns."""
    return {k: v for k, v in record.items() if k not in _STEP_KEYS}


def _has_delta(cp: Checkpoint) -> bool:
    """Whether a checkpoint names any keyframe remembered from an earlier write."""
    records = (cp.step.body if cp.step else None, cp.agent_output, cp.environment_feedback)
    return any(r is not None and r.base is not None for r in records) or (
        cp.game_state is not None and any(b.base_id for b in cp.game_state.blobs)
    )


def _ids(result: SaveResult) -> dict[str, Any]:
    return {
        "trajectory_id": result.trajectory_id,
        "step_number": result.step_number,
        "game_state_id": result.game_state_id,
        "created": result.created,
    }
