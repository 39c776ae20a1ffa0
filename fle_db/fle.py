"""A drop-in for FLE's database client (``fle.commons.db_client``, factorio-learning-environment 0.4.3).

An FLE user switches with one line::

    from fle_db.fle import create_db_client, get_next_version   # was: from fle.commons.db_client import ...

:func:`create_db_client` reads the same environment variables as FLE (``FLE_DB_TYPE``,
``SQLITE_DB_FILE``, ``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD``) and returns an
:class:`FLEDBClient` with FLE's method names, signatures and return shapes, identical on SQLite
and PostgreSQL. It runs on an :class:`~fle_db.AsyncDatabaseClient`: on PostgreSQL natively over
psycopg's async connections, on SQLite and MySQL on the client's worker thread; either way its
``async`` methods never block the event loop.

**Mapping.** FLE keeps one ``programs`` row per step; here a program is a step of the trajectory
``fle-v{version}-i{instance}`` (FLE's ``(version, instance)``), numbered by the database when it
is created (``DatabaseClient.append_step``: gap-free, monotonic), with its game state stored by
the storage engine (deduplicated, compressed) and its search statistics (``visits``, ``value``,
``advantage``) in a search-tree node of the tree ``fle-v{version}``. The program id is the node's
id, a monotonic integer never reused; ``parent_id`` is the step's explicit parent, so lineage
queries (``DatabaseClient.get_lineage``) follow it across instances and forks.

**Programs in, programs out.** Methods accept FLE ``Program`` objects — read by attribute, FLE is
never imported for that — or plain dicts with the same keys. They return FLE ``Program`` objects
when FLE is importable (imported lazily, on the first conversion), else dicts with ``Program``'s
field names (``state`` as the ``GameState.to_raw()`` JSON text, ``conversation`` as a dict).
A game state comes back exactly: ``state.to_raw()`` of a returned program is byte-identical to the
one created (the key order of every object is kept beside the state). Pickled namespaces stay the
hex text ``to_raw()`` makes of them: fle-db never unpickles anything.

**Depth, as FLE reads it.** FLE 0.4.3 stores ``depth / 2`` and reads that back, and its callers
count on it (beam search creates ``depth = current_depth * 2`` and resumes at the heads' depth;
the trajectory runner resumes its step counter at the depth read). So the search node's depth
is ``depth // 2`` — what ``get_largest_depth_in_version``, ``fle_programs.depth`` and returned
programs show — and the depth as created is kept with the program (``fle_depth=False`` returns
that instead).

**Differences from FLE 0.4.3, on purpose.** Errors raise (``fle_db.errors``) instead of turning
into ``[]``, ``0``, ``False`` or ``None``; only "there is nothing" gives an empty result.
``get_resume_state``
picks the highest step number of the trajectory, never a 1-second timestamp; ``process_id`` is
not a filter (the trajectory is ``(version, instance)``). ``update_program`` changes ``visits``,
``value`` and ``advantage`` (atomically); the rest of a program is an immutable checkpoint.
``get_next_version`` reserves the version atomically (FLE's ``MAX + 1`` raced).
``execute_query`` is read-only (see :meth:`FLEDBClient.execute_query`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import importlib
import json
import logging
import math
import random
import re
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pydantic

from .aio import AsyncDatabaseClient
from .errors import ConfigurationError, FleDBError, NotFoundError, ValidationError
from .instants import from_us
from .models import TEXT_LENGTH
from .validation import is_int

log = logging.getLogger("fle_db")

#: Program fields ``update_program`` may change: the search statistics (a node's mutable row).
MUTABLE_FIELDS = ("visits", "value", "advantage")
#: How many of a version's newest programs ``sample_parent`` weighs (as FLE does).
SAMPLE_WINDOW = 300
#: Tree of a version; every FLE tree starts with this prefix.
TREE_PREFIX = "fle-v"


def tree_id(version: int) -> str:
    """The search tree holding one FLE version's programs."""
    return f"{TREE_PREFIX}{_int(version, 'version')}"


def trajectory_id(version: int, instance: int) -> str:
    """The trajectory of FLE's ``(version, instance)``."""
    return f"{TREE_PREFIX}{_int(version, 'version')}-i{_int(instance, 'instance')}"


class ResumePoint(NamedTuple):
    """Where a trajectory resumes: ``found`` says whether it has a checkpoint; if not,
    ``reason`` says why and every other field is None."""

    found: bool
    state: Any
    conversation: Any
    program_id: int | None
    depth: int | None
    step_number: int | None
    reason: str | None


class FLEDBClient:
    """FLE's ``DBClient`` interface over an :class:`~fle_db.AsyncDatabaseClient` (which keeps
    the event loop running meanwhile; it belongs to the event loop it first ran on).

    Args:
        db: the store (owned: :meth:`cleanup` closes it).
        max_conversation_length: kept for FLE's signature; fle-db stores whole conversations.
        return_programs: True to return FLE ``Program`` objects (FLE must be installed), False
            for dicts; None (default) picks ``Program`` when FLE is importable.
        fle_depth: True (default) returns a program's depth as FLE 0.4.3 reads it, the created
            depth // 2 (FLE's callers rely on it); False returns the depth as created.
    """

    def __init__(
        self,
        db: AsyncDatabaseClient,
        max_conversation_length: int = 40,
        return_programs: bool | None = None,
        fle_depth: bool = True,
    ) -> None:
        if not isinstance(db, AsyncDatabaseClient):
            raise ConfigurationError(f"FLEDBClient takes an AsyncDatabaseClient, got {type(db).__name__}")
        self.db = db
        self.fle_depth = fle_depth
        self.max_conversation_length = max_conversation_length
        # FLE (with numpy, openai...) is imported on the first conversion, in a worker thread:
        # opening a client never blocks the event loop on it.
        self._return_programs = return_programs
        if return_programs and _fle_models() is None:
            raise ConfigurationError("return_programs=True needs FLE: pip install factorio-learning-environment")
        self._closed = False

    def _open(self) -> AsyncDatabaseClient:
        if self._closed:
            raise ConfigurationError("this FLE client was cleaned up; create a new one with create_db_client()")
        return self.db

    # -- FLE's async API ------------------------------------------------------------------
    async def initialize(self) -> None:
        """FLE's pool set-up: nothing to do (the store opened its pool). Idempotent."""

    async def create_program(self, program: Any) -> Any:
        """Store a program as the next step of its ``(version, instance)`` trajectory, with its
        game state and a search node (``visits`` 0, its ``value`` and ``advantage``). Sets the
        program's ``id`` and ``created_at`` (as FLE does) and returns it.

        Raises:
            NotFoundError: ``parent_id`` names no program. ValidationError: a field is not JSON
            (the message names it). Not idempotent: each call stores a new program.
        """
        db = self._open()
        fields = _read_program(program)
        version, instance = _int(fields["version"], "version"), _int(fields["instance"], "instance")
        step: dict[str, Any] = {"fle_program": fields["body"], "reward": fields["value"]}
        parent_id = fields["parent_id"]
        if parent_id is not None:
            parent = await db.get_search_node(_int(parent_id, "parent_id"))
            step["parent_trajectory_id"] = parent["trajectory_id"]
            step["parent_step_number"] = parent["step_number"]
        state = fields["state"]
        if state is not None:
            step["state_key_order"] = _key_order(state)
        await db.register_version(version, fields["body"]["version_description"], fields["body"]["model"])
        saved = await db.append_step(
            trajectory_id(version, instance),
            step,
            game_state=state,
            node={
                "tree": tree_id(version),
                "depth": fields["body"]["depth"] // 2,  # FLE's stored depth
                "value": fields["value"],
                "advantage": fields["advantage"],
            },
        )
        node = await db.get_search_node(saved["node_id"])
        _assign(program, "id", node["node_id"])
        _assign(program, "created_at", from_us(node["created_at"]))
        return program

    async def update_program(self, program_id: int, updates: dict[str, Any]) -> Any:
        """Set a program's ``visits``, ``value`` and/or ``advantage`` in one atomic UPDATE and
        return the program.

        Raises:
            ValidationError: another field (a program's content is an immutable checkpoint:
            create a new program instead). NotFoundError: no such program.
        """
        db = self._open()
        updates = dict(updates)
        immutable = sorted(set(updates) - set(MUTABLE_FIELDS))
        if immutable:
            raise ValidationError(
                f"update_program can change {', '.join(MUTABLE_FIELDS)}; {', '.join(immutable)} belong to the "
                "stored checkpoint, which is immutable: create a new program instead"
            )
        visits = updates.get("visits")
        await db.update_search_stats(
            _int(program_id, "program_id"),
            visits=_int(visits, "visits") if visits is not None else None,
            value=updates.get("value"),
            advantage=updates.get("advantage"),
        )
        return await self._program(await db.get_search_node(program_id))

    async def visit(self, id: int, children: int = 1) -> None:
        """FLE's ``DBSampler.visit``, atomically and committed: add ``children`` visits to the
        program and set each child's advantage to its value minus the children's mean value.
        A no-op for ``children == 0``. NotFoundError if there is no such program."""
        if children:
            await self._open().visit_search_node(_int(id, "id"), _int(children, "children"))

    async def get_resume_state(
        self, resume_version: int, process_id: Any = None, agent_idx: int = -1
    ) -> tuple[Any, Any, int | None, int | None]:
        """``(state, conversation, program_id, depth)`` of the newest program (highest step
        number) of ``(resume_version, agent_idx)`` that has a state and a value — FLE's shape.
        With no such checkpoint it returns ``(None, None, None, None)`` (FLE's callers then start
        afresh) and logs why; use :meth:`resume` for an explicit answer. Database errors raise.
        ``process_id`` is accepted for FLE's signature and not used as a filter."""
        point = await self.resume(resume_version, agent_idx)
        return point.state, point.conversation, point.program_id, point.depth

    async def resume(self, version: int, instance: int = -1) -> ResumePoint:
        """Where ``(version, instance)`` resumes: its newest program (highest step number) that
        has a game state and a value, or ``found=False`` with the reason (no such trajectory, no
        program with a state and a value). Database errors raise."""
        db = self._open()
        tid = trajectory_id(version, instance)
        latest = await db.get_search_nodes(
            tree_id(version), order="step", limit=1, with_state=True, with_value=True, trajectory_id=tid
        )
        if not latest:
            reason = (
                f"version {version} instance {instance} has programs, but none with a game state and a value"
                if await db.get_search_nodes(tree_id(version), limit=1, trajectory_id=tid)
                else f"version {version} instance {instance} has no checkpoint"
            )
            log.info("nothing to resume: %s; starting afresh", reason)
            return ResumePoint(False, None, None, None, None, None, reason)
        program = await self._program(latest[0])
        state, conversation = _get(program, "state"), _get(program, "conversation")
        return ResumePoint(True, state, conversation, latest[0]["node_id"], _get(program, "depth"),
                           latest[0]["step_number"], None)  # fmt: skip

    async def get_beam_heads(self, version: int, beam_width: int) -> list[Any]:
        """The ``beam_width`` highest-value programs of a version that have a state (ties: the
        older first) — what FLE's query returns (it unions the best of each depth with the
        ``2 * beam_width`` best overall and keeps the ``beam_width`` best, i.e. the best
        overall). ``[]`` if the version has none."""
        nodes = await self._open().get_search_nodes(
            tree_id(version), order="value", limit=_int(beam_width, "beam_width"), with_state=True, with_value=True
        )
        return [await self._program(node) for node in nodes]

    async def sample_parent(
        self, version: int = 1, compression_strength: float | None = None, adaptive_period: int = 100
    ) -> Any:
        """A parent program sampled as FLE does: among the version's 300 newest programs that have
        an advantage and a game state (never one whose state was thinned), weighted by
        ``(tanh(z * compression_strength) + 1) / 2 + 1e-6`` of the advantage's z-score;
        ``compression_strength`` None follows a sine of the program count with period
        ``adaptive_period``. None when the version has no such program."""
        db = self._open()
        tree = tree_id(version)
        if compression_strength is None:
            count = (await db.get_tree_summary(tree))["nodes"]
            compression_strength = (math.sin(2 * math.pi * count / adaptive_period) + 1) / 2
        recent = await db.get_search_nodes(
            tree, order="recent", limit=SAMPLE_WINDOW, with_advantage=True, with_state=True
        )
        if not recent:
            return None
        advantages = [float(node["advantage"]) for node in recent]
        mean = statistics.mean(advantages)
        std = statistics.stdev(advantages) if len(advantages) > 1 else 1.0
        weights = [
            (math.tanh(((a - mean) / std if std > 0 else 0.0) * compression_strength) + 1.0) / 2.0 + 1e-6
            for a in advantages
        ]
        chosen = random.choices(recent, weights=weights, k=1)[0]
        return await self._program(chosen)

    async def get_largest_version(self) -> int:
        """The largest version created or reserved, 0 if none."""
        found = await self._open().get_version()
        return int(found["version"]) if found is not None else 0

    async def get_largest_depth_in_version(self, version: int) -> int:
        """The largest program depth of a version as FLE stores it (created depth // 2), 0 if it
        has no program."""
        deepest = (await self._open().get_tree_summary(tree_id(version)))["max_depth"]
        return int(deepest) if deepest is not None else 0

    async def version_exists(self, version: int) -> bool:
        """Whether the version has at least one program."""
        return int((await self._open().get_tree_summary(tree_id(version)))["nodes"]) > 0

    async def get_version_metadata(self, version: int) -> dict[str, Any]:
        """``{"version_description", "model"}`` of a version (from its first program, or its
        reservation), ``{}`` for an unknown version."""
        found = await self._open().get_version(_int(version, "version"))
        return {"version_description": found["description"], "model": found["model"]} if found is not None else {}

    async def get_all_program_rewards(self, version: int | None = None) -> list[float]:
        """Every program value (not None) of a version, or of all versions, oldest first."""
        if version is not None:
            return await self._open().get_node_values(tree_id(version))
        return await self._open().get_node_values(tree_prefix=TREE_PREFIX)

    async def execute_query(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        """Run one read-only SELECT and return its rows as dicts.

        Parameters are always bound, never interpolated: write ``%s`` placeholders (FLE's style)
        with a tuple, on every backend (``%%`` is a literal ``%``, as in psycopg). Query the view
        ``fle_programs``: one row per program, shaped like FLE's ``programs`` table without its
        payloads — ``id``, ``version``, ``instance``, ``parent_id``, ``depth``, ``value``,
        ``visits``, ``advantage``, ``reward`` (the value at creation), ``has_state`` (0/1),
        ``model``, ``version_description``, ``created_at`` (epoch microseconds),
        ``trajectory_id``, ``step_number``; fle-db's tables are readable too. Code,
        conversations and states are stored compressed: load programs through the methods.

        Raises: as :meth:`fle_db.DatabaseClient.execute_query` (which this runs): ValidationError
            for a write or not exactly one statement, QueryTimeoutError, QueryLimitError, and on
            PostgreSQL/MySQL ConfigurationError when the SELECT-only login is missing.
        """
        return await self._open().execute_query(query, params)

    async def cleanup(self) -> None:
        """Release every connection. Idempotent; the client is unusable after."""
        if self._closed:
            return
        self._closed = True
        await self.db.close()

    def get_connection(self) -> Any:
        """FLE's raw psycopg2 connection: not offered (fle-db owns its SQL and transactions).
        FLE's ``DBSampler.visit`` uses it; call ``await client.visit(id, children)`` instead.

        Raises:
            ConfigurationError: always.
        """
        raise ConfigurationError(
            "fle-db does not hand out raw connections: for DBSampler.visit(id, n) call "
            "`await client.visit(id, n)`; for queries, `await client.execute_query(sql, params)`"
        )

    # -- conversion -----------------------------------------------------------------------
    async def _program(self, node: dict[str, Any]) -> Any:
        """The program stored at a node: an FLE ``Program`` when available, else a dict."""
        step = await self.db.load_step(node["trajectory_id"], node["step_number"])
        body = step.get("fle_program")
        if not isinstance(body, dict):
            raise NotFoundError(f"search node {node['node_id']} is not an FLE program")
        version, instance = _parse_trajectory(node["trajectory_id"])
        state_json = None
        if step["game_state_id"] is not None:
            state = _reordered(await self.db.load_game_state(step["game_state_id"]), step.get("state_key_order"))
            state_json = json.dumps(state)
        row = {
            **body,
            "id": node["node_id"],
            "value": node["value"],
            "visits": node["visits"],
            "advantage": node["advantage"],
            "parent_id": node["parent_node_id"],
            "version": version,
            "instance": instance,
            "depth": node["depth"] if self.fle_depth else body["depth"],
            "created_at": from_us(node["created_at"]),
            "state": state_json,
        }
        # FLE (numpy, openai...) takes seconds to import: the first time, on a thread
        models = await asyncio.to_thread(_fle_models) if self._return_programs is not False else None
        if models is None:
            return row
        return _to_fle_program(models, row)


async def create_db_client(
    max_conversation_length: int = 40, min_connections: int = 2, max_connections: int = 5
) -> FLEDBClient:
    """FLE's ``create_db_client``: open the store the environment names (``FLE_DB_TYPE`` =
    ``sqlite`` (default, ``SQLITE_DB_FILE``, default ``.fle/data.db``) or ``postgres``
    (``SKILLS_DB_HOST/PORT/NAME/USER/PASSWORD``)), migrating its schema, off the event loop.
    ``min_connections`` is accepted for FLE's signature; the pool holds ``max_connections``.

    Raises:
        ConfigurationError: a setting is missing or invalid (no fallback to SQLite).
        SchemaVersionError: the file holds tables fle-db did not create (e.g. FLE's own
        ``programs`` database: point ``SQLITE_DB_FILE`` at a new file).
    """
    db = AsyncDatabaseClient(max_connections=max_connections)
    await db.__aenter__()  # opens and migrates now: errors surface here, as in FLE
    return FLEDBClient(db, max_conversation_length=max_conversation_length)


async def get_next_version() -> int:
    """FLE's ``get_next_version``, without its race: reserves the next version atomically
    (concurrent callers, in any process, get distinct numbers)."""
    client = await create_db_client()
    try:
        return await client.db.allocate_version()
    finally:
        await client.cleanup()


# -- helpers --------------------------------------------------------------------------------
_TRAJECTORY = re.compile(rf"^{TREE_PREFIX}(-?\d+)-i(-?\d+)$")
_BODY_FIELDS = ("code", "response", "raw_reward", "holdout_value", "prompt_token_usage", "completion_token_usage",
                "token_usage", "version_description", "model", "meta", "achievements", "ticks")  # fmt: skip


def _int(value: Any, what: str) -> int:
    if not is_int(value):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValidationError(f"{what} must be an integer, got {value!r:.80}")
    return value


def _get(program: Any, name: str, default: Any = None) -> Any:
    if isinstance(program, Mapping):
        return program.get(name, default)
    return getattr(program, name, default)


def _assign(program: Any, name: str, value: Any) -> None:
    if isinstance(program, dict):
        program[name] = value
    else:
        setattr(program, name, value)


def _plain(value: Any, what: str) -> Any:
    """A pydantic model or dataclass (FLE's Conversation, TimingMetrics, ProductionFlows) as JSON data."""
    if value is None or isinstance(value, (dict, list, str, int, float, bool)):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise ValidationError(
        f"program {what} must be JSON data, a pydantic model or a dataclass, got {type(value).__name__}"
    )


def _read_program(program: Any) -> dict[str, Any]:
    """The fields of an FLE ``Program`` (by attribute) or a dict with the same keys."""
    if _get(program, "code") is None:
        raise ValidationError("program needs a 'code' (FLE's Program.code)")
    body = {name: _get(program, name) for name in _BODY_FIELDS}
    body["version_description"] = body["version_description"] if body["version_description"] is not None else ""
    body["model"] = body["model"] if body["model"] is not None else "gpt-4o"
    if not isinstance(body["model"], str) or len(body["model"]) > TEXT_LENGTH or "\x00" in body["model"]:
        raise ValidationError(f"program model must be a string of at most {TEXT_LENGTH} characters without NUL")
    body["meta"] = body["meta"] or {}
    body["achievements"] = body["achievements"] or {}
    body["ticks"] = body["ticks"] or 0
    body["depth"] = _int(_get(program, "depth", 0), "depth")
    if body["depth"] < 0:
        raise ValidationError(f"program depth must be >= 0, got {body['depth']}")
    body["conversation"] = _plain(_get(program, "conversation"), "conversation") or {"messages": []}
    body["timing_metrics"] = [_plain(m, "timing_metrics") for m in _get(program, "timing_metrics") or []]
    body["flows"] = _plain(_get(program, "flows"), "flows")
    value, advantage = _get(program, "value", 0.0), _get(program, "advantage", 0.0)
    return {
        "body": body,
        "state": _read_state(_get(program, "state")),
        "value": float(value) if value is not None else None,
        "advantage": float(advantage) if advantage is not None else None,
        "parent_id": _get(program, "parent_id"),
        "version": _get(program, "version", 1),
        "instance": _get(program, "instance", -1),
    }


def _read_state(state: Any) -> dict[str, Any] | None:
    """A game state as its ``to_raw()`` JSON object (key order as written)."""
    if state is None:
        return None
    raw = state.to_raw() if callable(getattr(state, "to_raw", None)) else state
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValidationError(f"program state is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValidationError(
            f"program state must be a GameState, its to_raw() JSON or a dict, got {type(raw).__name__}"
        )
    return raw


def _key_order(value: Any) -> Any:
    """Where a JSON value's object keys are not in sorted order (the store keeps values, not key
    order), the order to restore: ``{"keys": [key lists], "tree": ...}`` with a node per object
    ``[key list index or -1, {key: child node}]`` and ``{"items": {index: node}}`` per array;
    identical key lists (every ``TechnologyState``) are stored once."""
    lists: dict[tuple[str, ...], int] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            keys = tuple(v)
            children = {k: node for k in keys if (node := walk(v[k])) is not None}
            if list(keys) == sorted(keys) and not children:
                return None
            index = -1 if list(keys) == sorted(keys) else lists.setdefault(keys, len(lists))
            return [index, children]
        if isinstance(v, list):
            items = {str(i): node for i, item in enumerate(v) if (node := walk(item)) is not None}
            return {"items": items} if items else None
        return None

    tree = walk(value)
    return {"keys": [list(k) for k in lists], "tree": tree}


def _reordered(value: Any, order: Any) -> Any:
    """``value`` with its objects' keys in the order :func:`_key_order` recorded."""
    if not isinstance(order, dict) or order.get("tree") is None:
        return value
    lists = order["keys"]

    def walk(v: Any, node: Any) -> Any:
        if node is None:
            return v
        if isinstance(v, dict) and isinstance(node, list):
            index, children = node
            keys = lists[index] if index >= 0 else sorted(v)
            return {k: walk(v[k], children.get(k)) for k in keys}
        if isinstance(v, list) and isinstance(node, dict):
            items = node["items"]
            return [walk(item, items.get(str(i))) for i, item in enumerate(v)]
        return v

    return walk(value, order["tree"])


def _parse_trajectory(tid: str) -> tuple[int, int]:
    match = _TRAJECTORY.match(tid)
    if match is None:
        raise NotFoundError(f"trajectory {tid!r} is not an FLE (version, instance) trajectory")
    return int(match.group(1)), int(match.group(2))


class _Models(NamedTuple):
    program: Any
    conversation: Any
    game_state: Any


@functools.cache
def _fle_models() -> _Models | None:
    """FLE's model classes if FLE is installed (imported here only, lazily), else None."""
    try:
        program = importlib.import_module("fle.commons.models.program")
        conversation = importlib.import_module("fle.commons.models.conversation")
        game_state = importlib.import_module("fle.commons.models.game_state")
    except ImportError:
        return None
    return _Models(program.Program, conversation.Conversation, game_state.GameState)


def _to_fle_program(models: _Models, row: dict[str, Any]) -> Any:
    """An FLE ``Program`` from a row, the way FLE's ``Program.from_row`` builds it (plus the
    ``model``, ``flows`` and ``id`` it forgets)."""
    fields = dict(row)
    state = fields.pop("state")
    fields["conversation"] = models.conversation.parse_raw(fields["conversation"])
    fields["state"] = models.game_state.parse(json.loads(state)) if state is not None else None
    if fields.get("flows") is None:
        fields.pop("flows", None)
    try:
        return models.program(**fields)
    except pydantic.ValidationError as exc:  # a stored program FLE's model refuses
        raise FleDBError(f"program {row['id']} does not fit FLE's Program model: {exc}") from exc


__all__ = [
    "MUTABLE_FIELDS",
    "FLEDBClient",
    "ResumePoint",
    "create_db_client",
    "get_next_version",
    "trajectory_id",
    "tree_id",
]
