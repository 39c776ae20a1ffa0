"""The backend contract, split into roles (the rows they exchange are in :mod:`.rows`, re-exported here).

A backend implements :class:`CheckpointStore` (required: trajectories, steps, agent outputs,
environment feedbacks, game states, metadata, lineage, deletion, cleanup, schema) and any of the
optional roles :class:`SearchStore` (search nodes, FLE versions), :class:`AdminStore`
(statistics, health, maintenance, validation scans, read-only queries),
:class:`HistoryStore` (point-in-time history, snapshots for backups and copies, rewind, pruning)
and :class:`TailStore` (the live tail of new steps). :class:`Backend` is the union of all five.
A call that needs a role the backend lacks raises
:class:`~fle_db.errors.UnsupportedError` naming the role (see :func:`as_search`, :func:`as_admin`,
:func:`as_history`, :func:`roles`), never a fake result.

The client validates and encodes records (``fle_db.storage.codec``) before a backend sees them, so
a backend only moves rows of scalars and tagged bytes. Its promises, in every role:

* **Transactions.** Each write method is one transaction: it commits whole or not at all, and a
  reader never sees part of it.
* **Idempotency.** Writing a row that is already stored with the same digest is a no-op; a
  different row under the same key raises :class:`~fle_db.errors.ConflictError` and the whole
  transaction is rolled back. So a write retried after a lost reply is safe.
* **Errors.** Driver errors leave a backend only as :class:`~fle_db.errors.FleDBError`
  subclasses (chained), never as empty results: :class:`~fle_db.errors.BackendUnavailableError`
  (``retryable`` for a lost connection), :class:`~fle_db.errors.ConnectionTimeoutError`,
  :class:`~fle_db.errors.StorageFullError`, :class:`~fle_db.errors.ConflictError` (content
  differs under a stored key) and :class:`~fle_db.errors.MissingReferenceError` (a
  :class:`~fle_db.errors.NotFoundError`: the write names a parent row that does not exist).
* **Threads and processes.** A backend is safe to share between threads; it pools its own
  connections. Several processes may use one database at once where the engine allows it
  (SQLite files, PostgreSQL, MySQL/MariaDB).
* **Configuration.** A backend is selected by name (``FLE_DB_TYPE``) or URL scheme through
  :mod:`fle_db.backends.registry`; its classmethods turn settings into its URL, so nothing outside
  ``backends/`` knows which backend is in use.

A new backend subclasses :class:`CheckpointStore` plus the optional roles it supports, or
:class:`Backend` (or :class:`fle_db.backends.sql.SQLBackend` for a SQLAlchemy dialect) for all
of them, registers it under an entry point of the group ``fle_db.backends`` and proves itself with
the conformance suite, :mod:`fle_db.testing`, which skips the roles it does not implement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.engine import URL

from ..errors import UnsupportedError
from ..storage.engine import EncodedState, StoredBlob
from .rows import (
    LIST_ORDERS,
    Blob,
    Checkpoint,
    CleanupCriteria,
    CommitPoint,
    ConnectionOptions,
    ListedTrajectory,
    MigrationStatus,
    NodeQuery,
    NodeRow,
    SaveResult,
    Snapshot,
    StepPage,
    StepRow,
    StoredCheckpoint,
    StoredNode,
    StoredRecord,
    StoredState,
    StoredStep,
    TailedStep,
    TailMark,
    TailPosition,
    ThinRule,
    TrajectoryFilter,
    TrajectoryQuery,
    TrajectoryRow,
)

if TYPE_CHECKING:
    from ..config import Settings


class CheckpointStore(ABC):
    """The required role: trajectories, steps, agent outputs, environment feedbacks, game states,
    metadata, lineage, deletion and cleanup, with the schema they live in. Subclasses set
    :attr:`name` and implement every abstract method.

    The constructor opens what the backend needs (a pool, a file) but need not connect; the
    client then calls :meth:`migrate` (``auto_migrate``) or :meth:`migration_status`.
    """

    #: The name it is registered and selected by (``FLE_DB_TYPE=name``, ``name://`` URLs).
    name: ClassVar[str]

    #: Whether the asyncio client may run this backend's per-step calls on the event loop itself
    #: (an embedded database: no network wait, and lock waits avoided through
    #: :meth:`without_lock_waits`); see :mod:`fle_db.aio._runner`.
    runs_on_event_loop: bool = False

    @contextmanager
    def without_lock_waits(self) -> Iterator[None]:
        """Inside (this thread or task only): a write that would wait for another connection's
        lock raises :class:`~fle_db.errors.WouldWaitError` before it writes anything, instead of
        waiting. Backends with :attr:`runs_on_event_loop` implement it; the default waits as
        usual."""
        yield

    def __init__(self, settings: Settings) -> None:
        """Raises BackendUnavailableError if the database cannot be opened (a missing driver is
        a ConfigurationError naming the package to install)."""
        self.settings = settings

    # -- configuration (class-level: no connection) ---------------------------------------
    @classmethod
    @abstractmethod
    def url_from_options(cls, options: ConnectionOptions) -> URL:
        """The database URL when the backend is selected by name (``FLE_DB_TYPE``), built from
        the connection arguments and the environment (``options.get``; database servers use
        ``options.server_url`` for the ``SKILLS_DB_*`` variables).

        Raises ConfigurationError naming the missing or invalid argument or variable."""

    @classmethod
    def normalize_url(cls, url: URL) -> URL:
        """Validate a URL given explicitly (its scheme selected this backend) and pick the driver.
        The default keeps it as it is.

        Raises ConfigurationError when the URL cannot name a database of this backend."""
        return url

    @classmethod
    def location(cls, url: URL) -> str:
        """Where the database is, for messages and ``fle-db config``; never the password."""
        return url.render_as_string(hide_password=True)

    @classmethod
    def database_exists(cls, url: URL) -> bool:
        """Whether the database exists, without creating it or connecting (the default, for
        servers, assumes it does)."""
        return True

    # -- lifecycle and schema -------------------------------------------------------------
    @abstractmethod
    def close(self) -> None:
        """Release every connection. Idempotent."""

    @abstractmethod
    def migration_status(self) -> MigrationStatus:
        """Read-only: the database's version against the newest this library knows
        (``current_version`` None for an empty database).

        Raises SchemaVersionError if the database is newer than this library, or holds fle-db's
        table names without its version (another application's tables: never touched)."""

    @abstractmethod
    def migrate(self) -> list[str]:
        """Upgrade the schema to the newest version under a cross-process lock; returns the
        revisions applied (empty if none). Safe to call from many processes at once: each
        revision is applied exactly once. Raises SchemaVersionError as :meth:`migration_status`."""

    # -- writes ---------------------------------------------------------------------------
    @abstractmethod
    def save_trajectory(self, trajectory_id: str, build: Callable[[tuple[str, bytes]], TrajectoryRow]) -> None:
        """Create or update a trajectory in one transaction: ``build((codec, body))`` receives the
        stored body (an empty object for a new trajectory) and returns the row to store.

        Concurrent saves of one trajectory serialise (each merges into what the previous one
        committed: no key is lost). ``build`` may raise (e.g. DependencyError for a changed
        lineage); nothing is then written. Idempotent: the same save again changes nothing.

        Raises NotFoundError if a fork's parent step does not exist, DependencyError if the fork
        would make a lineage cycle."""

    @abstractmethod
    def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> list[SaveResult]:
        """Write all checkpoints in one transaction (missing trajectories are created empty),
        with their game states; returns one result per checkpoint, in order, ``created`` False
        where every part was stored already.

        Idempotent per part (step, agent output, feedback: by ``(trajectory_id, step_number)``
        and digest; states and blobs by content address); ConflictError (nothing of the call
        written) if any part differs from a stored one under the same key, including a step
        naming another game state."""

    @abstractmethod
    def save_game_state(self, state: EncodedState) -> None:
        """Store a content-addressed state with its blobs; a no-op if it is stored already.

        Keyframe blobs (no base) are written as full blobs even if the same content is stored as
        a delta already, so that every base stays a keyframe."""

    @abstractmethod
    def save_metadata(self, trajectory_id: str, key: str, value: Blob) -> None:
        """Insert or overwrite one metadata value (creating the trajectory empty if needed), in
        one transaction. Idempotent: the last write wins."""

    @abstractmethod
    def delete_trajectory(self, trajectory_id: str, cascade: bool) -> list[str]:
        """Delete a trajectory, its rows, and the game states and blobs nothing else uses; returns
        the ids deleted, in one transaction. Raises NotFoundError, or DependencyError if forks (or
        steps of other trajectories naming its steps as parents) exist and not ``cascade`` (with
        ``cascade`` the forks are deleted too, recursively). Not idempotent: a second call raises
        NotFoundError, so it must not be retried blindly after a lost reply."""

    @abstractmethod
    def append_checkpoint(
        self, trajectory_id: str, build: Callable[[int], Checkpoint]
    ) -> tuple[SaveResult, int | None]:
        """Append a step to a trajectory in one transaction: under the trajectory's lock (created
        if missing), ``build(n)`` receives the next step number (highest stored + 1; without
        steps, a fork's fork point + 1, else 0) and returns the checkpoint to write. Returns the
        result and the id of the node created with it (None without a node). Not idempotent:
        each call appends a new step.

        ConflictError if the checkpoint conflicts with stored data (nothing written)."""

    @abstractmethod
    def cleanup(self, criteria: CleanupCriteria, dry_run: bool) -> dict[str, Any]:
        """Delete the selected trajectories in one transaction — except those a surviving
        trajectory forks from (``kept_for_lineage``) — with their states and blobs nothing else
        uses. Returns ``trajectories`` (ids), ``kept_for_lineage``, ``rows`` (per table) and
        payload ``bytes_freed``; with ``dry_run``
        the same work is done and rolled back, so the report is exact."""

    def thin(self, criteria: CleanupCriteria, rule: ThinRule, dry_run: bool) -> dict[str, Any]:
        """Drop the game states of the selected trajectories' steps that ``rule`` does not keep,
        in one transaction (an ordinary commit of the point-in-time history), and re-encode the
        blobs that depended on dropped ones; see :meth:`fle_db.DatabaseClient.thin` for the
        report. With ``dry_run`` the same work is done and rolled back. Not abstract: a backend
        that does not thin raises UnsupportedError (the default)."""
        raise UnsupportedError(f"the {self.name!r} backend cannot thin game states", role="thin")

    def thinned_states(self, state_ids: Sequence[str]) -> set[str]:
        """The ids among ``state_ids`` of states :meth:`thin` dropped (and that were not saved
        again since). Default: none (a backend that does not thin has none)."""
        return set()

    # -- lineage --------------------------------------------------------------------------
    @abstractmethod
    def lineage(self, trajectory_id: str, step_number: int) -> list[tuple[str, int]]:
        """The path from the root to this step (inclusive), root first, in one recursive query:
        a step's parent is its explicit parent step, else the previous step of its trajectory,
        else (for a fork's first step) the step the trajectory was forked from. NotFoundError
        if the step does not exist."""

    @abstractmethod
    def children(self, trajectory_id: str, step_number: int) -> list[tuple[str, int]]:
        """The steps whose parent (in the sense of :meth:`lineage`) is this step."""

    @abstractmethod
    def branch_points(self, trajectory_id: str) -> list[int]:
        """Step numbers of this trajectory that may have two or more children (in the sense of
        :meth:`children`): those some trajectory forks from or some step names as its explicit
        parent, ascending. A superset is allowed; the caller checks with :meth:`children`."""

    @abstractmethod
    def iter_selected_trajectories(self, criteria: TrajectoryFilter) -> Iterator[str]:
        """Ids of the trajectories ``criteria`` selects, parents first: a selected fork comes
        after the selected trajectory it forks from (depth-first from each selected trajectory
        whose parent is not selected, in id order). Reads in chunks, one query per fork level;
        memory stays bounded by the fork tree's depth and width, not by the number selected."""

    # -- reads ----------------------------------------------------------------------------
    # Reads never write, and return what a committed transaction wrote, never part of one.
    @abstractmethod
    def load_trajectory(self, trajectory_id: str) -> StoredRecord | None:
        """The trajectory's stored body, or None."""

    @abstractmethod
    def trajectory_exists(self, trajectory_id: str) -> bool:
        """Whether a trajectory row exists."""

    @abstractmethod
    def load_steps(self, trajectory_id: str) -> list[StoredStep]:
        """All steps of a trajectory in ``step_number`` order."""

    @abstractmethod
    def load_checkpoint(self, trajectory_id: str, step_number: int | None) -> StoredCheckpoint | None:
        """A step with its agent output, environment feedback and game state (and the keyframes
        their deltas need), read in one statement; ``step_number`` None: the highest-numbered
        step. None if there is no such step."""

    @abstractmethod
    def list_trajectories(self, query: TrajectoryQuery) -> list[ListedTrajectory]:
        """The page of trajectories :class:`TrajectoryQuery` selects, in its order. Step counts
        are computed for the page's rows only, unless the order is by ``steps``."""

    @abstractmethod
    def trajectory_bodies(self, query: TrajectoryQuery) -> list[tuple[str, str, bytes]]:
        """``(id, codec, body)`` of every trajectory the query's filters select (its order,
        cursor and limit are ignored): for orders by keys that only the body holds."""

    @abstractmethod
    def load_step(self, trajectory_id: str, step_number: int) -> StoredStep | None:
        """One step, with the keyframe record its body is a delta of attached, or None."""

    @abstractmethod
    def load_game_state(self, state_id: str) -> StoredState | None:
        """A game state by id, or None."""

    @abstractmethod
    def load_game_states(self, state_ids: Sequence[str]) -> dict[str, StoredState]:
        """The game states found among ``state_ids`` (absent ids are left out), in few queries."""

    @abstractmethod
    def load_step_records(self, kind: str, trajectory_id: str) -> list[StoredStep]:
        """``kind`` is ``agent_outputs`` or ``environment_feedbacks``: a trajectory's rows in
        step order."""

    @abstractmethod
    def load_step_page(self, trajectory_id: str, after: int | None, max_steps: int, max_bytes: int) -> StepPage:
        """The next page of a trajectory's step numbers after ``after`` (None: from the first):
        at most ``max_steps`` numbers whose steps, agent outputs and feedbacks hold at most
        ``max_bytes`` stored (at least one number, whatever its size; sizes are read without the
        bodies). Empty lists when no numbers remain."""

    @abstractmethod
    def game_state_sizes(self, state_ids: Sequence[str]) -> dict[str, int]:
        """``{state_id: raw_size}`` of the states found among ``state_ids``, without their bodies."""

    @abstractmethod
    def load_metadata(self, trajectory_id: str) -> list[StoredRecord]:
        """A trajectory's metadata rows in key order."""


class SearchStore(ABC):
    """Optional role: FLE's search trees (one node per step, with statistics updated atomically
    in the database) and FLE version numbers. Writes are one transaction each, like
    :class:`CheckpointStore`'s; reads see only committed data."""

    # -- search trees ---------------------------------------------------------------------
    @abstractmethod
    def bump_search_stats(
        self,
        node_id: int,
        add_visits: int,
        add_value: float,
        set_value: float | None,
        set_advantage: float | None,
        set_visits: int | None = None,
    ) -> StoredNode:
        """Atomically add to a node's visits and value (or set visits / value / advantage) in one
        UPDATE; returns the node after it. NotFoundError if there is no such node."""

    @abstractmethod
    def visit(self, node_id: int, children: int) -> StoredNode:
        """FLE's sampler ``visit``, atomically: add ``children`` visits to the node and set each
        child node's advantage to its value minus the mean value of the node's children (those
        with a value). NotFoundError if there is no such node."""

    @abstractmethod
    def load_node(self, node_id: int | None = None, step: tuple[str, int] | None = None) -> StoredNode | None:
        """A node by id or by its step, or None."""

    @abstractmethod
    def find_nodes(self, query: NodeQuery) -> list[StoredNode]:
        """The nodes :class:`NodeQuery` selects, in its order (one indexed query)."""

    @abstractmethod
    def tree_summary(self, tree: str) -> tuple[int, int | None]:
        """``(node count, largest depth or None)`` of a tree."""

    @abstractmethod
    def tree_values(self, tree_prefix: str, tree: str | None) -> list[float]:
        """Every non-null node value of ``tree``, or of every tree starting with ``tree_prefix``."""

    # -- FLE versions ---------------------------------------------------------------------
    @abstractmethod
    def allocate_version(self, description: str | None, model: str | None) -> int:
        """Reserve the next FLE version (largest + 1) atomically: concurrent callers in any
        process get distinct numbers.

        Raises ConflictError when the number is lost to concurrent callers a bounded number of
        times in a row (never an endless retry)."""

    @abstractmethod
    def register_version(self, version: int, description: str | None, model: str | None) -> None:
        """Record a version given by the caller; a no-op if it is recorded already."""

    @abstractmethod
    def load_version(self, version: int | None) -> tuple[int, str | None, str | None] | None:
        """``(version, description, model)`` of a version (None: the largest), or None."""


class AdminStore(ABC):
    """Optional role: statistics, health, maintenance, read-only validation scans and read-only
    queries. Nothing here changes stored data (``maintain`` only reorganises it)."""

    # -- operations -----------------------------------------------------------------------
    @abstractmethod
    def statistics(self) -> dict[str, Any]:
        """Row counts (``exact_counts`` says whether estimates were used on large tables), bytes
        per table and in all, raw vs stored game-state bytes, oldest/newest step time (epoch
        microseconds). Read-only and cheap: no scan of payload tables."""

    @abstractmethod
    def health_checks(self) -> dict[str, dict[str, Any]]:
        """Named checks, each ``{"status": "ok" | "degraded" | "failing", "detail": str, ...}``:
        connectivity, schema, a write-and-read probe rolled back (leaves no trace), and the
        backend's own (disk, WAL, connection limits, replication). Never raises for a failed
        check: a failure is a ``failing`` entry."""

    @abstractmethod
    def pool_status(self) -> dict[str, int]:
        """``{"in_use", "idle", "max"}`` connections of this backend's pool."""

    @abstractmethod
    def maintain(self, vacuum: bool, reindex: bool) -> list[dict[str, Any]]:
        """Run the backend's maintenance — refresh planner statistics and checkpoint the log,
        plus VACUUM (returns free space to the filesystem) and REINDEX when asked — and return
        ``[{"action", "ms"}]``. VACUUM and REINDEX may take long on a large database."""

    # -- validation (read-only, streaming) ------------------------------------------------
    @abstractmethod
    def structure_problems(self) -> list[tuple[str, str, str]]:
        """``(kind, where, detail)`` from the engine's own checks (page structure, foreign keys,
        index consistency). Raises BackendUnavailableError if the file cannot be read at all."""

    @abstractmethod
    def iter_blobs(self) -> Iterator[StoredBlob]:
        """Every blob (with its base attached), in chunks."""

    @abstractmethod
    def manifest_problems(self) -> list[tuple[str, str]]:
        """``(state_id, detail)`` for states whose parts do not add up to their id."""

    @abstractmethod
    def iter_trajectory_ids(self) -> Iterator[str]:
        """Every trajectory id, in chunks."""

    @abstractmethod
    def trajectory_records(self, trajectory_id: str) -> list[tuple[str, list[StoredStep]]]:
        """``(table, rows)`` of a trajectory's steps, agent outputs and feedbacks."""

    @abstractmethod
    def reference_problems(self) -> list[tuple[str, str, str, str]]:
        """``(severity, kind, where, detail)``: fork points and step parents that do not exist
        (errors), blobs nothing uses (warnings: wasted space)."""

    @abstractmethod
    def numbering_problems(self) -> list[tuple[str, str]]:
        """``(where, detail)`` for trajectories whose step numbers have gaps."""

    # -- read-only queries ----------------------------------------------------------------
    @abstractmethod
    def read_only_query(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[dict[str, Any]]:
        """Run one SELECT written with ``%s`` placeholders (``%%``: a literal ``%`` when there are
        parameters) so that it can do nothing but read, stopped after ``query_timeout`` and
        refused beyond ``query_max_rows`` rows; nothing a query changes in its session may
        outlive the call. ValidationError if it tries to write or is not one statement;
        QueryTimeoutError, QueryLimitError past the limits."""


class HistoryStore(ABC):
    """Optional role: point-in-time history, consistent snapshots (backups and copies) and loading
    them, rewinding in place and pruning history. Every commit of the database has a sequence
    number and an instant; reads as of a commit see exactly what was committed then."""

    @abstractmethod
    def recovery_window(self) -> tuple[CommitPoint, CommitPoint]:
        """``(horizon, latest)``: the oldest and newest commits a point-in-time read can reach."""

    @abstractmethod
    def commit_position(self) -> CommitPoint:
        """The commit position: the newest commit a new reader sees, as ``(token, instant)``.
        It is what follows the database's changes (replaces the old ``log_head`` sequence):
        monotonic, a later call never returns an earlier instant, and every row a reader sees is
        of a commit at or before it. Commits are ordered by instant, not by token (a token is
        only unique). Where writers run concurrently (PostgreSQL, MySQL) a commit in flight can still
        appear with an instant at or just below the position: its last statement ran, its COMMIT
        had not returned. A reader that must not miss one (a live tail) reads again once every
        transaction that was in flight has ended: on PostgreSQL once
        ``pg_snapshot_xmin(pg_current_snapshot())`` passes the ``pg_snapshot_xmax`` of the snapshot
        it read in (the token minus ``log_head.seq`` is the commit's transaction id); on MySQL a
        locking read (``LOCK IN SHARE MODE``) of the ``commit_log`` rows after a position waits
        for the commits in flight among them."""

    @abstractmethod
    def commit_at(self, at_us: int) -> CommitPoint:
        """The newest commit at or before ``at_us`` (epoch microseconds).

        Raises:
            ValidationError: ``at_us`` is before the recovery window's horizon or in the future.
        """

    @abstractmethod
    def snapshot(self, seq: int | None = None) -> AbstractContextManager[Snapshot]:
        """A consistent read of everything as committed at ``seq`` (None: now). Read-only."""

    @abstractmethod
    def load_snapshot(
        self, snapshot: Snapshot, replace: bool, progress: Callable[[str, int], None] | None = None
    ) -> dict[str, int]:
        """Write ``snapshot`` (from this or another backend) into this database in one transaction.

        ``replace=False``: this database must be empty (ConflictError otherwise) and becomes an
        exact copy, history and commit log included. ``replace=True``: one new commit makes the
        snapshot's rows current, archiving what was here (so this database's own history, and
        point-in-time reads of it, stay intact). ``progress(table, rows)`` is called per chunk.
        Returns the rows written per table."""

    @abstractmethod
    def rewind(self, seq: int) -> dict[str, int]:
        """One new commit that makes the data equal to its state at ``seq``; history is kept, so
        the rewind itself can be undone. Returns the rows changed per table.

        Raises:
            ValidationError: ``seq`` is outside the recovery window."""

    @abstractmethod
    def prune_history(self, before_us: int) -> dict[str, int]:
        """Move the recovery horizon to the newest commit at or before ``before_us`` and delete
        history nothing after it needs. Idempotent. Returns the rows deleted per table."""


class TailListener(ABC):
    """A live tail's wake-up hint (PostgreSQL: a ``LISTEN`` connection). Only a hint: the tail
    reads the commit log after every wait, so a lost notification only delays a step."""

    @abstractmethod
    def wait(self, seconds: float) -> None:
        """Return when a notification arrives or after ``seconds``, whichever is first. A lost
        connection is not an error: it waits out the time and reconnects on the next call."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection. Idempotent."""


class TailStore(ABC):
    """Optional role: the live tail (``DatabaseClient.tail``) — the steps committed after a
    position, in commit order. A tail calls :meth:`tail_mark`, then :meth:`tail_steps` in a LATER
    statement (a new snapshot) with a bound whose marks have settled (see :class:`TailMark`)."""

    @abstractmethod
    def tail_mark(self) -> TailMark:
        """The newest commit a new reader sees, and the write transactions that may still commit
        at or below it (read after that commit position, in the same snapshot or later). Empty
        ``in_flight`` where writers are serialized. Read-only, idempotent."""

    @abstractmethod
    def tail_steps(
        self,
        after: TailPosition,
        upto: int,
        trajectory_ids: Sequence[str] | None,
        task: str | None,
        with_parts: bool,
        limit: int,
    ) -> list[TailedStep]:
        """At most ``limit`` steps that are after ``after`` in commit order and committed at or
        before the instant ``upto``, oldest first; only of ``trajectory_ids`` (None: any) and of
        trajectories whose ``task`` is that (None: any). ``with_parts``: with their agent output
        and environment feedback. A step whose commit was pruned from the log is never returned
        (it is older than the recovery horizon). Read-only, idempotent."""

    def tail_listener(self) -> TailListener | None:
        """A wake-up hint for a tail, or None (default): the tail polls."""
        return None


class Backend(CheckpointStore, SearchStore, AdminStore, HistoryStore, TailStore):
    """A backend implementing every role: subclass it (or
    :class:`fle_db.backends.sql.SQLBackend`) to provide them all, or subclass
    :class:`CheckpointStore` plus the optional roles you support."""


#: The optional roles, with what each provides (for messages).
OPTIONAL_ROLES: dict[str, str] = {
    "SearchStore": "search trees and FLE versions",
    "AdminStore": "statistics, health checks, maintenance, validation and read-only queries",
    "HistoryStore": "point-in-time history, backups, copies, rewind and history pruning",
    "TailStore": "the live tail of new steps",
}


def unsupported(backend: CheckpointStore, role: str) -> UnsupportedError:
    """The error for a call that needs the optional ``role`` (a role class name) of a backend
    lacking it: it names the role, the backend and what the role provides."""
    return UnsupportedError(
        f"the {backend.name!r} backend does not implement the {role} role ({OPTIONAL_ROLES[role]}); "
        "use a backend that does (the built-in sqlite, postgres and mysql backends implement every role)",
        role=role,
    )


def as_search(backend: CheckpointStore) -> SearchStore:
    """``backend``'s SearchStore role. Raises UnsupportedError if it does not implement it."""
    if isinstance(backend, SearchStore):
        return backend
    raise unsupported(backend, "SearchStore")


def as_admin(backend: CheckpointStore) -> AdminStore:
    """``backend``'s AdminStore role. Raises UnsupportedError if it does not implement it."""
    if isinstance(backend, AdminStore):
        return backend
    raise unsupported(backend, "AdminStore")


def as_history(backend: CheckpointStore) -> HistoryStore:
    """``backend``'s HistoryStore role. Raises UnsupportedError if it does not implement it."""
    if isinstance(backend, HistoryStore):
        return backend
    raise unsupported(backend, "HistoryStore")


def as_tail(backend: CheckpointStore) -> TailStore:
    """``backend``'s TailStore role. Raises UnsupportedError if it does not implement it."""
    if isinstance(backend, TailStore):
        return backend
    raise unsupported(backend, "TailStore")


def roles(backend: CheckpointStore | type[CheckpointStore]) -> dict[str, bool]:
    """Which optional roles ``backend`` (an instance or class) implements, by role name."""
    cls = backend if isinstance(backend, type) else type(backend)
    return {role.__name__: issubclass(cls, role) for role in (SearchStore, AdminStore, HistoryStore, TailStore)}


#: The row types are re-exported: backends and the client import them from here.
__all__ = [
    "LIST_ORDERS",
    "OPTIONAL_ROLES",
    "AdminStore",
    "Backend",
    "Blob",
    "Checkpoint",
    "CheckpointStore",
    "CleanupCriteria",
    "CommitPoint",
    "ConnectionOptions",
    "HistoryStore",
    "ListedTrajectory",
    "MigrationStatus",
    "NodeQuery",
    "NodeRow",
    "SaveResult",
    "SearchStore",
    "Snapshot",
    "StepPage",
    "StepRow",
    "StoredCheckpoint",
    "StoredNode",
    "StoredRecord",
    "StoredState",
    "StoredStep",
    "TailListener",
    "TailMark",
    "TailPosition",
    "TailStore",
    "TailedStep",
    "ThinRule",
    "TrajectoryFilter",
    "TrajectoryQuery",
    "TrajectoryRow",
    "as_admin",
    "as_history",
    "as_search",
    "as_tail",
    "roles",
    "unsupported",
]
