"""Search trees: the search-node, lineage and version methods of :class:`~fle_db.DatabaseClient`.

A search tree (MCTS, beam search, evolutionary sampling) is a set of nodes, each a step of some
trajectory with statistics (``visits``, ``value``, ``advantage``); ``append_step(..., node=...)``
creates them (in :mod:`fle_db.client`, with the checkpoint). This mixin reads and updates them,
makes forks (and what a fork inherits), walks lineage across forks, and allocates the numbered
versions FLE groups its runs by. It only validates arguments and shapes the backend's rows into
dicts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .backends.base import CheckpointStore, NodeQuery, SearchStore, StoredNode, as_search
from .errors import NotFoundError, ValidationError
from .models import TEXT_LENGTH
from .ops.metrics import Metrics, timed
from .storage.records import Records
from .validation import check_count, check_float, check_id, check_node_id, check_step_number, check_text, is_int

_Found = TypeVar("_Found")

#: What a fork takes from its parent unless given (its own keys, the run's result, are not).
_INHERITED_KEYS = ("task", "agent_type")


class SearchTrees:
    """Search-node, lineage and version methods; mixed into :class:`~fle_db.DatabaseClient`."""

    _backend: CheckpointStore
    _metrics: Metrics
    _records: Records

    @property
    def _search(self) -> SearchStore:
        """The backend's search trees and FLE versions (UnsupportedError if it lacks the role)."""
        return as_search(self._backend)

    @timed
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
            found = self._search.load_node(node_id=check_node_id(node_id))
        else:
            found = self._search.load_node(
                step=(check_id(trajectory_id, "trajectory_id"), check_step_number(step_number))
            )
        if found is None:
            where = f"{node_id}" if node_id is not None else f"at step {step_number} of {trajectory_id!r}"
            raise NotFoundError(f"search node {where} does not exist")
        return node_dict(found)

    @timed
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
        check_id(tree, "tree")
        if trajectory_id is not None:
            check_id(trajectory_id, "trajectory_id")
        if order not in ("value", "recent", "step"):
            raise ValidationError(f"order must be 'value', 'recent' or 'step', got {order!r}")
        query = NodeQuery(tree, order=order, limit=check_count(limit, "limit"), with_state=with_state,
                          with_value=with_value, with_advantage=with_advantage,
                          trajectory_id=trajectory_id)  # fmt: skip
        return [node_dict(node) for node in self._search.find_nodes(query)]

    @timed
    def get_best_per_depth(self, tree: str, n: int = 1, *, with_state: bool = False) -> list[dict[str, Any]]:
        """The ``n`` highest-value nodes of each depth of a tree (nodes without a value are not
        ranked), by depth then value (ties: the older node first). One query over
        ``ix_search_nodes_tree``."""
        check_id(tree, "tree")
        query = NodeQuery(tree, per_depth=check_count(n, "n"), with_state=with_state)
        return [node_dict(node) for node in self._search.find_nodes(query)]

    @timed
    def get_tree_summary(self, tree: str) -> dict[str, Any]:
        """``{"nodes": int, "max_depth": int | None}`` of a tree (0 and None for an unknown or
        empty tree). One aggregate query over ``ix_search_nodes_tree``. Read-only.

        Raises:
            ValidationError: ``tree`` is not an id.
        """
        count, deepest = self._search.tree_summary(check_id(tree, "tree"))
        return {"nodes": count, "max_depth": deepest}

    @timed
    def get_node_values(self, tree: str | None = None, *, tree_prefix: str | None = None) -> list[float]:
        """Every node value that is not None, oldest node first, of ``tree``, or of every tree
        whose id starts with ``tree_prefix`` (exactly one of them). Read-only.

        Raises:
            ValidationError: neither or both given, or not an id.
        """
        if (tree is None) == (tree_prefix is None):
            raise ValidationError("get_node_values: give tree or tree_prefix")
        if tree is not None:
            return self._search.tree_values("", check_id(tree, "tree"))
        return self._search.tree_values(check_id(tree_prefix, "tree_prefix"), None)

    # -- forks ----------------------------------------------------------------------------
    @timed
    def fork_trajectory(
        self,
        parent_trajectory_id: str,
        parent_step_number: int,
        trajectory_id: str | None = None,
        **fields: Any,
    ) -> str:
        """Fork a trajectory from any of its steps: a new trajectory (``trajectory_id``, or a
        fresh uuid) whose lineage is that step, with ``fields`` as its other keys and the
        parent's ``task`` and ``agent_type`` unless given (a fork saved before keeps its own).
        Nothing is copied: until the fork has a step, :meth:`load_latest_checkpoint` gives the
        fork point's checkpoint; :meth:`append_step` numbers its first step fork point + 1, whose
        parent is the fork point (see :meth:`get_lineage`); a step saved with the parent's game
        state shares the stored state by its content address. A step the parent only inherits
        (a fork forked again at or before its own fork point, before it stores that step) is
        forked where it is stored: the lineage names that trajectory. Idempotent for the same
        id and fork point.

        Raises:
            NotFoundError: the fork point does not exist. DependencyError: ``trajectory_id``
            already exists with another lineage. ValidationError: bad id or field.
        """
        check_id(parent_trajectory_id, "parent_trajectory_id")
        number = check_step_number(parent_step_number)
        parent = self._backend.load_trajectory(parent_trajectory_id)
        inherited: dict[str, Any] = {}
        owner = parent_trajectory_id
        if parent is not None:
            body = self._records.load(parent.codec, parent.body)
            inherited = {key: body[key] for key in _INHERITED_KEYS if key in body}
            found = self._along_lineage(parent_trajectory_id, number, self._backend.load_step)
            owner = found[0] if found is not None else parent_trajectory_id
        tid = trajectory_id if trajectory_id is not None else f"fork-{uuid.uuid4().hex}"
        fork = {**fields, "id": tid, "parent_trajectory_id": owner, "parent_step_number": parent_step_number}
        saved_id, build = self._records.trajectory(fork, inherited)
        self._backend.save_trajectory(saved_id, build)
        return saved_id

    def _fork_point(self, trajectory_id: str) -> tuple[str, int] | None:
        """The step a trajectory was forked from, None if it is not a fork.

        Raises:
            NotFoundError: the trajectory was never saved (the message says how a run starts).
        """
        stored = self._backend.load_trajectory(trajectory_id)
        if stored is None:
            raise NotFoundError(
                f"trajectory {trajectory_id!r} does not exist (a new run: save_trajectory({{'id': ...}}) first)"
            )
        body = self._records.load(stored.codec, stored.body)
        parent = body.get("parent_trajectory_id")
        return (parent, int(body["parent_step_number"])) if parent is not None else None

    def _along_lineage(
        self, trajectory_id: str, step_number: int, load: Callable[[str, int], _Found | None]
    ) -> tuple[str, _Found] | None:
        """The first trajectory that stores step ``step_number`` as seen from ``trajectory_id``
        (itself, else, while the step is at or before the fork point, its parent, and so on),
        with what ``load`` read there; None if there is none."""
        tid: str | None = trajectory_id
        seen: set[str] = set()
        while tid is not None and tid not in seen:
            seen.add(tid)
            found = load(tid, step_number)
            if found is not None:
                return tid, found
            fork = self._fork_point(tid)
            tid = fork[0] if fork is not None and step_number <= fork[1] else None
        return None

    def _inherited_checkpoint(self, trajectory_id: str) -> dict[str, Any] | None:
        """What a trajectory without steps resumes from (see ``load_latest_checkpoint``): a
        fork's fork point with ``inherited_from``, else None. NotFoundError: never saved."""
        fork = self._fork_point(trajectory_id)
        if fork is None:
            return None
        found = self._along_lineage(*fork, self._backend.load_checkpoint)
        if found is None:
            raise NotFoundError(
                f"step {fork[1]} of trajectory {fork[0]!r}, the fork point of {trajectory_id!r}, is gone"
            )
        owner, checkpoint = found
        return {
            **self._records.checkpoint_dict(checkpoint),
            "inherited_from": {"trajectory_id": owner, "step_number": fork[1]},
        }

    @timed
    def get_lineage(self, trajectory_id: str, step_number: int) -> list[dict[str, Any]]:
        """The path from the root to this step, root first, as ``[{"trajectory_id",
        "step_number"}]``, across forks: a step's parent is its explicit parent step, else the
        previous step of its trajectory, else (a fork's first step) the fork point. One
        recursive query.

        Raises:
            NotFoundError: the step does not exist.
        """
        path = self._backend.lineage(check_id(trajectory_id, "trajectory_id"), check_step_number(step_number))
        return [{"trajectory_id": tid, "step_number": number} for tid, number in path]

    @timed
    def get_children(self, trajectory_id: str, step_number: int) -> list[dict[str, Any]]:
        """The steps whose parent (as in :meth:`get_lineage`) is this step, as
        ``[{"trajectory_id", "step_number"}]`` sorted; ``[]`` for a leaf.

        Raises:
            NotFoundError: the step does not exist.
        """
        check_id(trajectory_id, "trajectory_id")
        number = check_step_number(step_number)
        found = self._backend.children(trajectory_id, number)
        if not found and self._backend.load_step(trajectory_id, number) is None:
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return [{"trajectory_id": tid, "step_number": n} for tid, n in found]

    @timed
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
        if not is_int(add_visits):
            raise ValidationError(f"add_visits must be an integer, got {add_visits!r}")
        node = self._search.bump_search_stats(
            check_node_id(node_id),
            add_visits,
            check_float(add_value, "add_value") or 0.0,
            check_float(value, "value"),
            check_float(advantage, "advantage"),
            check_count(visits, "visits"),
        )
        return node_dict(node)

    @timed
    def visit_search_node(self, node_id: int, children: int = 1) -> dict[str, Any]:
        """FLE's sampler ``visit``, in one transaction: add ``children`` visits to the node, and
        set each child node's advantage to its value minus the mean of its siblings' values.
        Returns the node after it.

        Raises:
            NotFoundError: no such node.
        """
        return node_dict(self._search.visit(check_node_id(node_id), check_count(children, "children") or 0))

    # -- versions ---------------------------------------------------------------------------
    @timed
    def allocate_version(self, description: str | None = None, model: str | None = None) -> int:
        """Reserve the next version number (the largest created or reserved + 1, from 1) with its
        ``description`` and ``model``, atomically: concurrent callers in any process get distinct
        numbers. Not idempotent: every call reserves a new number.

        Raises:
            ValidationError: ``description`` or ``model`` is not a string (or a ``model`` over
            200 characters).
        """
        return self._search.allocate_version(*_version_fields(description, model))

    @timed
    def register_version(self, version: int, description: str | None = None, model: str | None = None) -> None:
        """Record a version number chosen by the caller, with its ``description`` and
        ``model``. Idempotent: a version recorded already keeps its first description and model.

        Raises:
            ValidationError: ``version`` is not a 64-bit integer, or a bad ``description``/``model``.
        """
        self._search.register_version(_check_version(version), *_version_fields(description, model))

    @timed
    def get_version(self, version: int | None = None) -> dict[str, Any] | None:
        """``{"version", "description", "model"}`` of a recorded version (``None``: of the
        largest one), or None when there is no such version. Read-only.

        Raises:
            ValidationError: ``version`` is not a 64-bit integer.
        """
        found = self._search.load_version(_check_version(version) if version is not None else None)
        return {"version": found[0], "description": found[1], "model": found[2]} if found is not None else None


def _check_version(version: Any) -> int:
    if not is_int(version) or not -(2**63) <= version < 2**63:
        raise ValidationError(f"version must be a 64-bit integer, got {version!r:.80}")
    return int(version)


def _version_fields(description: Any, model: Any) -> tuple[str | None, str | None]:
    """Refused: anything but a string without NUL characters or lone surrogates (PostgreSQL's
    driver cannot encode those), and a ``model`` over the schema's length."""
    check_text(description, "description")
    if check_text(model, "model") is not None and len(model) > TEXT_LENGTH:
        raise ValidationError(f"model must be a string of at most {TEXT_LENGTH} characters, got {model!r:.80}")
    return description, model


def node_dict(node: StoredNode) -> dict[str, Any]:
    """A stored node as the dict the node methods return."""
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
