"""``DatabaseClient``: the one facade users touch.

It validates arguments and delegates: records are encoded and decoded by
:mod:`fle_db.storage.records`, arguments checked by :mod:`fle_db.validation`, instants parsed by
:mod:`fle_db.instants`, search trees served by :mod:`fle_db.search`, backups and recovery by
:mod:`fle_db.recovery` over :mod:`fle_db.ops`; the SQL is the backend's (SQLite, PostgreSQL,
MySQL/MariaDB or a third party's). Every method is safe to call from several threads at once (the backend pools
connections), and every public method that does work is counted in
:meth:`DatabaseClient.get_performance_metrics`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, Unpack

from . import instants, listing, models
from .backends import AdminStore, CheckpointStore, as_admin, as_search, open_backend
from .backends.base import Checkpoint, NodeRow, SaveResult, TrajectoryFilter
from .config import Options, Settings
from .errors import NotFoundError, SchemaVersionError, ValidationError
from .maintenance import Maintenance
from .ops import backup, export
from .ops.metrics import Metrics, timed
from .ops.validate import validate as validate_database
from .recovery import Recovery
from .search import SearchTrees
from .storage.engine import PendingBases
from .storage.records import STEP_KEYS, Records, ids
from .tail import Tailing
from .validation import (
    as_dict,
    as_list,
    check_callback,
    check_float,
    check_id,
    check_ids,
    check_query,
    check_query_params,
    check_step_number,
    check_text,
    node_row,
)

_SEVERITY = ["ok", "degraded", "failing"]
_T = TypeVar("_T")


class DatabaseClient(SearchTrees, Recovery, Maintenance, Tailing):
    """Checkpoint store for agent trajectories on SQLite (default), PostgreSQL, MySQL/MariaDB or a
    custom backend.

    Settings come from the arguments, then the environment (``FLE_DB_TYPE``, ``SQLITE_DB_FILE``,
    ``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD``, ``FLE_DB_BACKUP_*``), then defaults (SQLite at
    ``.fle/data.db``); :class:`~fle_db.config.Options` lists every keyword argument with its
    type, :meth:`Settings.resolve <fle_db.config.Settings.resolve>` their defaults::

        db = DatabaseClient()                                   # environment / defaults
        db = DatabaseClient("postgresql://user:pw@host:5432/db") # or a URL (mysql://... too)
        db = DatabaseClient(max_connections=10, connection_timeout=30)

    The schema is migrated on open (under a cross-process lock) unless ``auto_migrate=False``.
    Use as a context manager, or call :meth:`close`, to release connections.

    Raises:
        ConfigurationError: a setting is missing or invalid (the message names it).
        BackendUnavailableError: the database cannot be opened.
        SchemaVersionError: the database was written by a newer fle-db, or by another application.
    """

    def __init__(self, url: str | None = None, **options: Unpack[Options]) -> None:
        self._settings = Settings.resolve(url, **options)
        self._records = Records(self._settings.max_payload_bytes, self._settings.cache_max_bytes)
        self._metrics = Metrics(self._settings.slow_operation_ms)
        self._backend: CheckpointStore = self._open_backend()
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

    def _open_backend(self) -> CheckpointStore:
        """The backend ``self._settings`` names (:class:`fle_db.aio.AsyncDatabaseClient` opens
        one over an asyncio driver instead)."""
        return open_backend(self._settings)

    # -- the backend's optional roles (search and history: in their mixins) -----------------
    @property
    def _admin(self) -> AdminStore:
        """The backend's statistics, health, maintenance and scans (UnsupportedError if absent)."""
        return as_admin(self._backend)

    def _search_node_row(self, node: Mapping[str, Any] | None) -> NodeRow | None:
        """The search node to create with a step (None without one). Raises UnsupportedError,
        before anything is written, if the backend has no SearchStore role to keep it in."""
        if node is None:
            return None
        as_search(self._backend)
        return node_row(node)

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
    @timed
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
        trajectory_id, build = self._records.trajectory(trajectory)
        self._backend.save_trajectory(trajectory_id, build)
        return trajectory_id

    @timed
    def load_trajectory(self, trajectory_id: str) -> dict[str, Any]:
        """The trajectory as saved (merged over all saves), with ``id``.

        Raises:
            NotFoundError: no such trajectory. ValidationError: malformed id.
        """
        stored = self._backend.load_trajectory(check_id(trajectory_id, "trajectory_id"))
        if stored is None:
            raise NotFoundError(f"trajectory {trajectory_id!r} does not exist")
        return {"id": trajectory_id, **self._records.load(stored.codec, stored.body)}

    @timed
    def delete_trajectory(self, trajectory_id: str, *, cascade: bool = False) -> list[str]:
        """Delete a trajectory with its steps, outputs, feedbacks, metadata and the game states
        no other step uses, in one transaction. Returns the ids deleted. The rows stay
        restorable (:meth:`restore_to`) for ``pitr_retention``, then :meth:`optimize` prunes them.

        Raises:
            NotFoundError: no such trajectory.
            DependencyError: forks depend on it and ``cascade`` is False. With ``cascade=True``
                the forks (and their forks) are deleted too: **dangerous**.
        """
        return self._backend.delete_trajectory(check_id(trajectory_id, "trajectory_id"), cascade)

    # -- steps and checkpoints ------------------------------------------------------------
    @timed
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
        node_fields = self._search_node_row(node)
        return self._save(
            lambda pending: [
                self._records.checkpoint(step, agent_output, environment_feedback, game_state, pending, node_fields)
            ]
        )[0]

    @timed
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
        records = as_list(steps, "steps")

        def build(pending: PendingBases) -> list[Checkpoint]:
            checkpoints = []
            for index, step in enumerate(records):
                try:
                    checkpoints.append(self._records.checkpoint(step, None, None, None, pending))
                except ValidationError as exc:
                    raise type(exc)(f"batch element {index}: {exc}") from None
            return checkpoints

        return self._save(build)

    @timed
    def load_steps(self, trajectory_id: str, *, with_parts: bool = False) -> list[dict[str, Any]]:
        """All steps of a trajectory in ``step_number`` order, each as saved plus
        ``game_state_id`` (None without a state). ``with_parts=True``: each step also carries
        its ``agent_output`` and ``environment_feedback`` as entries (left out where the step has
        none), as :meth:`save_step` accepts them (without the step's key fields).

        Raises:
            NotFoundError: no such trajectory (a trajectory without steps gives ``[]``).
        """
        rows = self._backend.load_steps(check_id(trajectory_id, "trajectory_id"))
        if not rows:
            self._require_trajectory(trajectory_id)
        loaded = self._records.steps(rows)
        if with_parts:
            for name in ("agent_output", "environment_feedback"):
                found = self._backend.load_step_records(name + "s", trajectory_id)
                by_number = dict(zip((r.step_number for r in found), self._records.values(found), strict=True))
                for step in loaded:
                    if step["step_number"] in by_number:
                        step[name] = by_number[step["step_number"]]
        return loaded

    @timed
    def load_step(self, trajectory_id: str, step_number: int) -> dict[str, Any]:
        """One step as saved, plus ``game_state_id`` (None without a state).

        Raises:
            NotFoundError: no such step.
        """
        row = self._backend.load_step(check_id(trajectory_id, "trajectory_id"), check_step_number(step_number))
        if row is None:
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return self._records.steps([row])[0]

    @timed
    def load_checkpoint(self, trajectory_id: str, step_number: int) -> dict[str, Any]:
        """One checkpoint as saved: ``{"step", "agent_output", "environment_feedback",
        "game_state"}``, each equal to what :meth:`save_step` was given (parts given as keyword
        arguments or as entries of the step alike; the step with ``game_state_id`` added, the
        parts without the step's key fields); absent parts are None. One query. Read-only.

        Raises:
            NotFoundError: no such step. ValidationError: malformed id or step number.
        """
        found = self._backend.load_checkpoint(check_id(trajectory_id, "trajectory_id"), check_step_number(step_number))
        if found is None:
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return self._records.checkpoint_dict(found)

    @timed
    def load_latest_checkpoint(self, trajectory_id: str) -> dict[str, Any] | None:
        """Where a run resumes: its newest checkpoint (highest ``step_number``), as
        :meth:`load_checkpoint` gives it (``{"step", "agent_output", "environment_feedback",
        "game_state"}``), read in one index lookup. A fork without steps of its own resumes
        from its fork point: that checkpoint, plus ``"inherited_from": {"trajectory_id",
        "step_number"}`` naming where it is stored. None for a saved trajectory without steps
        that is not a fork: start the run afresh.

        Raises:
            NotFoundError: the trajectory was never saved (a typo'd id must not start afresh:
            ``save_trajectory({"id": ...})`` first). ValidationError: malformed id.
        """
        found = self._backend.load_checkpoint(check_id(trajectory_id, "trajectory_id"), None)
        return self._records.checkpoint_dict(found) if found is not None else self._inherited_checkpoint(trajectory_id)

    @timed
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

    # -- appending --------------------------------------------------------------------------
    @timed
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
        the trajectory's lock, ``step_number`` = highest stored + 1 (0 for the first; a fork's
        first is its fork point + 1), so concurrent appenders in any process get distinct,
        gap-free numbers — the monotonic order resume reads. ``step`` is a step without
        ``trajectory_id``/``step_number`` (it may name an explicit parent with
        ``parent_trajectory_id``/``parent_step_number``). ``node``
        (``{"tree": str, "depth": int, "value": float | None, "advantage": float | None}``)
        makes the step a search-tree node in the same transaction, with 0 visits.

        Not idempotent: every call appends a new step (retrying after a lost reply may append
        twice). Returns the ids of :meth:`save_step` plus ``node_id`` (None without a node).

        Raises:
            ValidationError: bad input (nothing written). NotFoundError: never (a missing
            trajectory is created empty). ConflictError: a concurrent delete removed a base.
        """
        check_id(trajectory_id, "trajectory_id")
        record = dict(as_dict(step if step is not None else {}, "step"))
        for key in STEP_KEYS:
            if key in record and not (key == "trajectory_id" and record[key] == trajectory_id):
                raise ValidationError(f"append_step numbers the step itself: do not give {key!r}")
        node_fields = self._search_node_row(node)

        def attempt(pending: PendingBases) -> tuple[SaveResult, int | None]:
            def build(number: int) -> Checkpoint:
                return self._encode(
                    lambda: self._records.checkpoint(
                        {**record, "trajectory_id": trajectory_id, "step_number": number},
                        agent_output, environment_feedback, game_state, pending, node_fields,
                    )
                )  # fmt: skip

            return self._backend.append_checkpoint(trajectory_id, build)

        result, node_id = self._records.write(attempt)
        return {**ids(result), "node_id": node_id}

    # -- game states ----------------------------------------------------------------------
    @timed
    def save_game_state(self, state: Mapping[str, Any]) -> str:
        """Store a game state (any JSON object); returns its id, the digest of its content.

        Equal states get the same id and are stored once, so saving again is a no-op.

        Raises:
            ValidationError: not a JSON object, or not exactly representable as JSON.
        """
        encoded = self._encode(lambda: self._records.encoder.encode(state, "game_state", None, PendingBases()))
        self._backend.save_game_state(encoded)
        return encoded.id

    @timed
    def load_game_state(self, state_id: str) -> dict[str, Any]:
        """The game state with this id, equal to what was saved.

        Raises:
            NotFoundError: no such state. DataIntegrityError: the stored bytes are corrupt.
        """
        stored = self._backend.load_game_state(check_id(state_id, "state_id"))
        if stored is None:
            raise NotFoundError(f"game state {state_id!r} does not exist")
        return self._records.state(stored)

    @timed
    def load_game_states(self, state_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Many game states at once (e.g. every state of a trajectory, from ``load_steps``), as
        ``{state_id: state}``: one query per 500 ids, shared parts decoded once.

        Raises:
            NotFoundError: an id does not exist (the message names it). DataIntegrityError:
            stored bytes are corrupt. ValidationError: a malformed id.
        """
        wanted = list(dict.fromkeys(check_ids(state_ids, "state_ids")))
        stored = self._backend.load_game_states(wanted)
        missing = [sid for sid in wanted if sid not in stored]
        if missing:
            raise NotFoundError(f"game state(s) {', '.join(map(repr, missing[:5]))} do not exist")
        return self._records.states(stored[sid] for sid in wanted)

    # -- agent outputs, environment feedbacks ---------------------------------------------
    @timed
    def save_agent_output(self, output: Mapping[str, Any] | models.AgentOutput) -> dict[str, Any]:
        """Save the agent's output for one step (``trajectory_id``, ``step_number`` + any JSON).
        Idempotent; ConflictError if a different output is stored for that step."""
        return self._save(self._records.step_part("agent_output", models.AgentOutput, output))[0]

    @timed
    def save_environment_feedback(self, feedback: Mapping[str, Any] | models.EnvironmentFeedback) -> dict[str, Any]:
        """Save the environment's feedback for one step; same rules as :meth:`save_agent_output`."""
        return self._save(self._records.step_part("environment_feedback", models.EnvironmentFeedback, feedback))[0]

    @timed
    def load_agent_outputs(self, trajectory_id: str) -> list[dict[str, Any]]:
        """A trajectory's agent outputs in step order. Raises NotFoundError for an unknown trajectory."""
        return self._load_step_records("agent_outputs", trajectory_id)

    @timed
    def load_environment_feedbacks(self, trajectory_id: str) -> list[dict[str, Any]]:
        """A trajectory's environment feedbacks in step order. Raises NotFoundError for an unknown trajectory."""
        return self._load_step_records("environment_feedbacks", trajectory_id)

    # -- metadata -------------------------------------------------------------------------
    @timed
    def save_metadata(self, trajectory_id: str, key: str, value: Any) -> None:
        """Set one metadata key of a trajectory to any JSON value (overwrites; idempotent).
        A trajectory not saved yet is created empty."""
        check_id(trajectory_id, "trajectory_id")
        check_id(key, "metadata key")
        self._backend.save_metadata(trajectory_id, key, self._records.value(value, f"metadata {key!r}"))

    @timed
    def load_metadata(self, trajectory_id: str) -> dict[str, Any]:
        """All metadata of a trajectory as ``{key: value}``. Raises NotFoundError for an unknown trajectory."""
        rows = self._backend.load_metadata(check_id(trajectory_id, "trajectory_id"))
        if not rows:
            self._require_trajectory(trajectory_id)
        return {str(row.key): self._records.load(row.codec, row.body) for row in rows}

    # -- read-only SQL --------------------------------------------------------------------
    @timed
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
        return self._admin.read_only_query(check_query(query), check_query_params(params))

    # -- export and import ----------------------------------------------------------------
    @timed
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
        success: bool | None = None,
        min_total_reward: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Write the selected trajectories — with steps, agent outputs, feedbacks, game states and
        metadata — to ``path``, streaming (memory is bounded by bytes, not by the data: see
        ``fle_db.ops.export``).

        ``format``: ``"jsonl"`` (importable with :meth:`import_data`; zstd-compressed when
        ``path`` ends in ``.zst``), ``"chat"`` (one OpenAI-style conversation per trajectory, for
        fine-tuning), ``"sft"`` (``chat`` plus per-turn rewards and search values),
        ``"preference"`` (TRL conversational pairs of sibling continuations ranked by value),
        ``"adp"`` (Agent Data Protocol trajectories), ``"parquet"`` (one row per step) or ``"hf"``
        (a folder: Parquet shards of ``sft`` rows and a dataset card; ``path`` must be absent or
        an empty folder); ``parquet`` and ``hf`` need ``pip install 'fle-db[parquet]'``;
        ``fle_db.ops.export`` documents each layout. Filters (AND): ``trajectory_ids``,
        ``task``, ``agent_type``, ``since`` / ``until`` on when the trajectory was first
        saved into this database (aware datetime, ISO 8601 with offset, or epoch seconds;
        ``since`` inclusive, ``until`` exclusive), ``success`` (the trajectory's flag) and
        ``min_total_reward`` (inclusive; a trajectory without a total reward fails it). Parents
        come before their forks. A state dropped by :meth:`thin` is written as null (the step keeps
        its ``game_state_id``): an export never fails on one. The output is written to a temporary
        name beside ``path`` (owner-only) and renamed into place when complete;
        ``progress(trajectories_done, 0)`` is called after each trajectory. Read-only.

        Returns ``{"path", "format", "trajectories", "checkpoints", "skipped", "bytes", "seconds"}``
        (``preference`` adds ``pairs`` and ``ties``; ``hf`` adds ``shards`` and ``rows``).

        Raises:
            ValidationError: unknown format, bad filter, ``hf`` into a non-empty folder.
            ConfigurationError: ``parquet`` / ``hf`` without pyarrow. Database errors propagate
            and leave nothing behind.
        """
        if success is not None and not isinstance(success, bool):
            raise ValidationError(f"success must be True, False or None, got {success!r:.80}")
        criteria = TrajectoryFilter(
            check_ids(trajectory_ids, "trajectory_ids") if trajectory_ids is not None else None,
            check_text(task, "task"),
            check_text(agent_type, "agent_type"),
            instants.optional_instant(since, "since"),
            instants.optional_instant(until, "until"),
            success,
            check_float(min_total_reward, "min_total_reward"),
        )
        return export.export_data(
            self,
            self._backend.iter_selected_trajectories(criteria),
            path,
            format,
            criteria,
            check_callback(progress),
        )

    @timed
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
        return export.import_data(self, path, check_callback(progress))

    # -- maintenance (cleanup, thin, apply_retention: in their mixin) -----------------------
    @timed
    def optimize(self, *, vacuum: bool = False, reindex: bool = False) -> dict[str, Any]:
        """The maintenance each backend needs, with a report ``{"actions": [{"action", "ms"}],
        "size_before", "size_after"}``.

        First, point-in-time history older than ``pitr_retention`` is pruned
        (``history_pruned``: rows per table). SQLite: ANALYZE, then ``wal_checkpoint(TRUNCATE)``
        (the WAL shrinks to zero bytes);
        PostgreSQL: ANALYZE of fle-db's tables; MySQL: ANALYZE TABLE. ``vacuum=True`` also rewrites the database to
        return free pages to the filesystem (after :meth:`cleanup`; it needs free disk space of
        about the database's size and blocks writers meanwhile); ``reindex=True`` rebuilds the
        indexes (PostgreSQL: concurrently; MySQL: both are ``OPTIMIZE TABLE``). Safe to run at any
        time; idempotent.
        """
        before = self._admin.statistics()["size"]
        pruned = self._history.prune_history(instants.ago_us(self._settings.pitr_retention))
        actions = self._admin.maintain(vacuum, reindex)
        return {
            "actions": actions,
            "history_pruned": pruned,
            "size_before": before,
            "size_after": self._admin.statistics()["size"],
        }

    @timed
    def validate(self, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
        """Check everything: structure (SQLite ``integrity_check`` and ``foreign_key_check``,
        PostgreSQL ``amcheck`` where installed, MySQL ``CHECK TABLE``), every blob's checksum and digest, every state's
        parts, every step, output and feedback, lineage references, step numbering.

        Returns ``{"ok": bool, "problems": [{"severity", "kind", "where", "detail"}], "checked":
        {...}}``; ``ok`` is False when any problem is an error (gaps in step numbering are
        warnings, as are blobs nothing uses). Read-only; reads the whole database in chunks, so
        it takes time on large ones: ``progress(stage, done)`` is called along the way.
        """
        return validate_database(self._backend, check_callback(progress))

    # -- monitoring -----------------------------------------------------------------------
    @timed
    def get_statistics(self) -> dict[str, Any]:
        """What the database holds, read cheaply (no scan of payload tables):

        ``trajectories``, ``steps``, ``game_states``, ``agent_outputs``,
        ``environment_feedbacks``, ``blobs`` (row counts; PostgreSQL estimates tables over 50,000
        rows, and ``exact_counts`` is then False), ``size`` (bytes: the SQLite file and its WAL,
        or fle-db's tables on the server), ``tables`` (bytes per table with its indexes),
        ``game_state_bytes`` (``raw``: the states' JSON as saved; ``stored``: what the engine
        keeps; ``ratio``), ``oldest_step_at`` / ``newest_step_at`` (ISO 8601 UTC, None if empty).
        """
        stats = self._admin.statistics()
        state_bytes = stats["game_state_bytes"]
        state_bytes["ratio"] = state_bytes["stored"] / state_bytes["raw"] if state_bytes["raw"] else None
        for key in ("oldest_step", "newest_step"):
            micros = stats.pop(f"{key}_us")
            stats[f"{key}_at"] = instants.optional_iso(micros)
        return {"backend": self._settings.backend, **stats}

    @timed
    def health_check(self) -> dict[str, Any]:
        """``{"status": "ok" | "degraded" | "failing", "checks": {...}}``: the worst of the
        checks, each with a status and a detail — connectivity, schema up to date, a write-and-
        read probe that leaves no trace, pool saturation, and per backend disk space and WAL size
        (SQLite), server connection limits and replication/standby (PostgreSQL), connection limit,
        read-only mode, durability and ``max_allowed_packet`` (MySQL). Never raises
        for an unhealthy database: that is what ``failing`` reports."""
        checks = self._admin.health_checks()
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
        pool = self._admin.pool_status()
        return {
            **self._metrics.snapshot(),
            "connection_count": pool["in_use"] + pool["idle"],
            "pool": pool,
            "cache": self._records.cache.stats(),
        }

    # -- migrations -----------------------------------------------------------------------
    @timed
    def migrate(self) -> list[str]:
        """Apply pending schema migrations (under a cross-process lock); returns the revisions
        applied, empty if the schema was current. Idempotent."""
        return self._backend.migrate()

    @timed
    def get_migration_status(self) -> dict[str, Any]:
        """``{"current_version", "latest_version", "pending", "up_to_date"}``; read-only."""
        return self._backend.migration_status().as_dict()

    # -- internals ------------------------------------------------------------------------
    def _save(self, build: Callable[[PendingBases], list[Checkpoint]]) -> list[dict[str, Any]]:
        """Encode with ``build`` and write in one transaction (see :meth:`Records.write`)."""

        def attempt(pending: PendingBases) -> list[SaveResult]:
            return self._backend.save_checkpoints(self._encode(lambda: build(pending)))

        return [ids(result) for result in self._records.write(attempt)]

    def _encode(self, encode: Callable[[], _T]) -> _T:
        """Run ``encode`` (validation, JSON, compression of a write's records: CPU work) here; the
        asyncio client's native twin runs it on a thread, so that its event loop keeps turning."""
        return encode()

    def _load_step_records(self, kind: str, trajectory_id: str) -> list[dict[str, Any]]:
        rows = self._backend.load_step_records(kind, check_id(trajectory_id, "trajectory_id"))
        if not rows:
            self._require_trajectory(trajectory_id)
        return self._records.step_records(rows)

    def _require_trajectory(self, trajectory_id: str) -> None:
        if not self._backend.trajectory_exists(trajectory_id):
            raise NotFoundError(f"trajectory {trajectory_id!r} does not exist")
