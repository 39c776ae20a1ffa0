"""The rows backends exchange with the client: what a write receives, what a read returns, and
the connection options a backend builds its URL from (see :mod:`.base` for the role contracts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import URL

from ..errors import ConfigurationError
from ..redact import MASK, redact
from ..storage.engine import EncodedRecord, EncodedState, StoredBlob


@dataclass(frozen=True)
class ConnectionOptions:
    """What a backend builds its URL from when it is selected by name (``FLE_DB_TYPE``): the
    connection arguments given to :meth:`Settings.resolve` (None when not given) and the
    environment they fall back to."""

    backend: str
    arguments: Mapping[str, Any]
    env: Mapping[str, str]

    def get(self, argument: str, variable: str, *, required: bool = False) -> Any:
        """The argument if given, else the environment variable (None if neither).

        Raises:
            ConfigurationError: ``required`` and neither is set; the message names the variable.
        """
        value = self.arguments.get(argument)
        if value is None:
            value = self.env.get(variable)
        if required and (value is None or str(value).strip() == ""):
            raise ConfigurationError(
                f"the {self.backend} backend was selected (FLE_DB_TYPE={self.backend}) but {variable} is not set; "
                f"set it or pass a {self.backend}:// URL"
            )
        return value

    def server_url(self, drivername: str, default_port: int) -> URL:
        """The URL of a database server from ``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD`` (host,
        name and user required) plus ``SKILLS_DB_SSLMODE/SSLROOTCERT`` as query parameters
        ``sslmode``/``sslrootcert``, which the backend interprets.

        Raises:
            ConfigurationError: required variables are missing (all of them named at once) or
                the port is not a port number; the message echoes what was given, the password
                masked.
        """
        values = {argument: self.get(argument, variable) for argument, variable in _SERVER_VARIABLES.items()}
        missing = [
            _SERVER_VARIABLES[argument]
            for argument in _REQUIRED_SERVER_ARGUMENTS
            if values[argument] is None or not str(values[argument]).strip()
        ]
        problems = [f"{_and(missing)} {'is' if len(missing) == 1 else 'are'} not set"] if missing else []
        raw_port = values["port"]
        port = default_port
        if raw_port not in (None, ""):
            try:
                port = int(raw_port)
            except (TypeError, ValueError):
                problems.append(f"SKILLS_DB_PORT must be a port number, got {raw_port!r}")
            else:
                if not 0 < port < 65536:
                    problems.append(f"SKILLS_DB_PORT must be in 1..65535, got {port}")
        if problems:
            given = ", ".join(
                f"{_SERVER_VARIABLES[argument]}={MASK if argument == 'password' else redact(repr(str(value)))}"
                for argument, value in values.items()
                if value not in (None, "")
            )
            raise ConfigurationError(
                f"the {self.backend} backend was selected (FLE_DB_TYPE={self.backend}) but "
                + "; ".join(problems)
                + f"; set them or pass a {self.backend}:// URL (given: {given or 'none of the SKILLS_DB_* variables'})"
            )
        tls = ("sslmode", "sslrootcert")
        return URL.create(
            drivername,
            username=values["user"],
            password=values["password"] or None,
            host=values["host"],
            port=port,
            database=values["database"],
            query={key: str(values[key]) for key in tls if values[key]},
        )


#: Connection arguments of a server backend -> the environment variables they fall back to.
_SERVER_VARIABLES = {
    "host": "SKILLS_DB_HOST",
    "port": "SKILLS_DB_PORT",
    "database": "SKILLS_DB_NAME",
    "user": "SKILLS_DB_USER",
    "password": "SKILLS_DB_PASSWORD",
    "sslmode": "SKILLS_DB_SSLMODE",
    "sslrootcert": "SKILLS_DB_SSLROOTCERT",
}
_REQUIRED_SERVER_ARGUMENTS = ("host", "database", "user")


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


@dataclass(frozen=True, slots=True)
class Blob:
    """An encoded payload: codec tag, stored bytes, digest of the canonical JSON."""

    codec: str
    body: bytes
    digest: str


@dataclass(frozen=True, slots=True)
class StepRow:
    """The step part of a checkpoint, with the columns its indexes need."""

    body: EncodedRecord
    reward: float | None = None
    parent_trajectory_id: str | None = None
    parent_step_number: int | None = None


@dataclass(frozen=True, slots=True)
class NodeRow:
    """The search-tree node of a step, created with it: ``tree`` groups the nodes one search
    compares, ``depth`` is fixed; ``visits``, ``value`` and ``advantage`` are the mutable
    statistics' starting values."""

    tree: str
    depth: int
    value: float | None = None
    advantage: float | None = None
    visits: int = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Everything saved at one step, written in one transaction. Any part may be absent."""

    trajectory_id: str
    step_number: int
    step: StepRow | None = None
    agent_output: EncodedRecord | None = None
    environment_feedback: EncodedRecord | None = None
    game_state: EncodedState | None = None
    node: NodeRow | None = None


@dataclass(frozen=True, slots=True)
class StoredNode:
    """A search-tree node as read back, with its step's game state id and explicit parent step,
    and ``parent_id``: the node of that parent step, if it has one."""

    id: int
    trajectory_id: str
    step_number: int
    tree: str
    depth: int
    visits: int
    value: float | None
    advantage: float | None
    created_at: int
    updated_at: int
    game_state_id: str | None
    parent_trajectory_id: str | None
    parent_step_number: int | None
    parent_id: int | None


@dataclass(frozen=True, slots=True)
class NodeQuery:
    """Which nodes of one ``tree`` to read (every condition given must hold).

    ``order``: ``"value"`` (highest first, ties: older first) or ``"recent"`` (newest first, by
    the monotonic node id). ``per_depth``: keep only the best ``per_depth`` of each depth (by
    value), returned by depth then value."""

    tree: str | None
    order: str = "value"
    limit: int | None = None
    per_depth: int | None = None
    with_state: bool = False
    with_value: bool = False
    with_advantage: bool = False
    trajectory_id: str | None = None


@dataclass(frozen=True, slots=True)
class TrajectoryRow:
    """A trajectory: the indexed columns plus the encoded body of every other key."""

    id: str
    body: Blob
    agent_type: str | None = None
    task: str | None = None
    total_reward: float | None = None
    success: bool | None = None
    parent_trajectory_id: str | None = None
    parent_step_number: int | None = None


@dataclass(frozen=True, slots=True)
class StoredStep:
    """A step (or agent output, environment feedback: then ``game_state_id`` is None) as read
    back. ``base_step_number`` names the keyframe record a delta needs; ``base`` carries that
    record when a single step was read (resume)."""

    trajectory_id: str
    step_number: int
    game_state_id: str | None
    codec: str
    body: bytes
    digest: str
    base_step_number: int | None = None
    base: StoredStep | None = None


@dataclass(frozen=True, slots=True)
class StepPage:
    """A page of a trajectory's records (see ``CheckpointStore.load_step_page``), each list in
    step order, every delta whose keyframe lies outside the page with it attached; ``more``:
    numbers may follow the page."""

    steps: list[StoredStep]
    agent_outputs: list[StoredStep]
    environment_feedbacks: list[StoredStep]
    more: bool


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A step with its agent output, environment feedback and game state (each None when the
    checkpoint has none), read in one statement."""

    step: StoredStep
    agent_output: StoredStep | None
    environment_feedback: StoredStep | None
    game_state: StoredState | None


@dataclass(frozen=True, slots=True)
class StoredState:
    """A game state as read back: its row, and its parts when stored as a manifest."""

    id: str
    codec: str
    body: bytes
    parts: tuple[tuple[str, StoredBlob], ...] = ()


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A trajectory body or metadata value as read back."""

    trajectory_id: str
    key: int | str
    codec: str
    body: bytes


@dataclass(frozen=True, slots=True)
class SaveResult:
    """What one checkpoint write did: ``created`` is False when it was all already stored."""

    trajectory_id: str
    step_number: int
    game_state_id: str | None
    created: bool


@dataclass(frozen=True, slots=True)
class CleanupCriteria:
    """Which trajectories a cleanup selects: every given criterion must hold (AND)."""

    before_us: int | None = None  # neither it nor its steps written since (epoch microseconds)
    trajectory_ids: tuple[str, ...] | None = None
    task: str | None = None
    agent_type: str | None = None
    keep_best_per_task: int | None = None  # select all but the N best (total_reward) per task


@dataclass(frozen=True, slots=True)
class ThinRule:
    """Which game states a thinning keeps, besides every trajectory's latest step and every fork
    point: each step whose number is a multiple of ``keep_every``, and every search node (with
    ``thin_search_nodes``: only the ``keep_best_per_depth`` highest-value nodes of each depth of
    each tree)."""

    keep_every: int = 10
    keep_best_per_depth: int = 1
    thin_search_nodes: bool = False


@dataclass(frozen=True, slots=True)
class TrajectoryFilter:
    """Which trajectories an export selects: every given criterion must hold (AND)."""

    trajectory_ids: tuple[str, ...] | None = None
    task: str | None = None
    agent_type: str | None = None
    since_us: int | None = None  # first saved at or after (epoch microseconds)
    until_us: int | None = None  # first saved before (epoch microseconds)
    success: bool | None = None  # the trajectory's success column equals this
    min_total_reward: float | None = None  # total_reward at least this (a null total_reward fails)


#: What :class:`TrajectoryQuery` can order by: a column or a computed value (``steps``).
#: ``start_time`` orders by when the trajectory was first saved (``created_at``); ``end_time``
#: is only in the body, so the client orders by it (see ``DatabaseClient.list_trajectories``).
LIST_ORDERS = ("id", "task", "agent_type", "steps", "total_reward", "success", "start_time")


@dataclass(frozen=True, slots=True)
class TrajectoryQuery:
    """One page of trajectories: every filter given must hold (AND); rows ordered by ``order_by``
    (one of :data:`LIST_ORDERS`; nulls last in both directions, ties by id), starting after
    ``after`` = ``(sort value, id)`` of the previous page's last row, at most ``limit`` rows."""

    task: str | None = None
    agent_type: str | None = None
    success: bool | None = None
    since_us: int | None = None  # first saved at or after (epoch microseconds)
    until_us: int | None = None  # first saved before
    id_contains: str | None = None  # case-insensitive substring of the id
    parent_trajectory_id: str | None = None
    ids: tuple[str, ...] | None = None
    order_by: str = "start_time"
    descending: bool = True
    limit: int | None = 50
    after: tuple[Any, str] | None = None


@dataclass(frozen=True, slots=True)
class ListedTrajectory:
    """A row of a trajectory list: the indexed columns, the step count, when it was first saved
    and its encoded body (for keys that are not columns, such as ``start_time``)."""

    id: str
    task: str | None
    agent_type: str | None
    steps: int
    total_reward: float | None
    success: bool | None
    created_at: int
    parent_trajectory_id: str | None
    parent_step_number: int | None
    codec: str
    body: bytes


@dataclass(slots=True)
class MigrationStatus:
    """Schema version of the database against the newest this library knows."""

    current_version: str | None
    latest_version: str
    pending: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.pending

    def as_dict(self) -> dict[str, Any]:
        return {
            "current_version": self.current_version,
            "latest_version": self.latest_version,
            "pending": list(self.pending),
            "up_to_date": self.up_to_date,
        }


@dataclass(frozen=True, slots=True)
class CommitPoint:
    """One commit of the log: its token (``seq``: unique, not ordered; on SQLite and MySQL a
    counter) and instant (epoch microseconds, UTC), which orders commits."""

    seq: int
    committed_at: int


@dataclass(frozen=True, slots=True)
class TailPosition:
    """A place in commit order, where a live tail resumes: just after the step
    ``(trajectory_id, step_number)`` of the commit ``(committed_at, seq)``, or after that whole
    commit when ``trajectory_id`` is None. Steps are ordered by ``(committed_at, seq,
    trajectory_id, step_number)`` (ids compare byte for byte on every backend)."""

    committed_at: int
    seq: int
    trajectory_id: str | None = None
    step_number: int = -1


@dataclass(frozen=True, slots=True)
class TailMark:
    """What a live tail reads before it fetches: the newest commit a new reader sees
    (``position``) and the write transactions still open that may yet commit at or below it
    (``in_flight``: opaque identifiers; always empty where writers are serialized, as on SQLite
    and MySQL). Once none of them is open any more, every commit up to ``position`` is visible."""

    position: CommitPoint
    in_flight: frozenset[str]


@dataclass(frozen=True, slots=True)
class TailedStep:
    """A step a live tail found: where it is in commit order, and its stored records (the agent
    output and environment feedback only when asked for, else None)."""

    position: TailPosition
    step: StoredStep
    agent_output: StoredStep | None = None
    environment_feedback: StoredStep | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole database as committed at :attr:`head`, read in one consistent transaction.

    ``rows(name)`` streams a table's rows as chunks of column dicts: the stored tables (in an
    order safe to insert chunk by chunk), their ``*_history`` twins and ``commit_log``;
    ``count(name)`` counts them. Valid only inside the backend's :meth:`Backend.snapshot` block.
    """

    head: CommitPoint
    horizon: CommitPoint
    revision: str | None
    rows: Callable[[str], Iterator[list[dict[str, Any]]]]
    count: Callable[[str], int]


__all__ = [
    "LIST_ORDERS",
    "Blob",
    "Checkpoint",
    "CleanupCriteria",
    "CommitPoint",
    "ConnectionOptions",
    "ListedTrajectory",
    "MigrationStatus",
    "NodeQuery",
    "NodeRow",
    "SaveResult",
    "Snapshot",
    "StepPage",
    "StepRow",
    "StoredCheckpoint",
    "StoredNode",
    "StoredRecord",
    "StoredState",
    "StoredStep",
    "ThinRule",
    "TrajectoryFilter",
    "TrajectoryQuery",
    "TrajectoryRow",
]
