"""The SearchStore role of the SQL backends: search-tree nodes and their statistics, and FLE
versions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    func,
    insert,
    select,
    update,
)

from ...errors import (
    ConflictError,
    NotFoundError,
)
from ...schema import (
    fle_versions,
    search_nodes,
    steps,
)
from ..base import (
    NodeQuery,
    SearchStore,
    StoredNode,
)
from . import versioned
from .core import SQLCore, _idempotent, _restartable, now_us
from .thinning import thinned_state


def _node_select() -> Any:
    """Nodes with their step's state id, explicit parent step and that parent's node id."""
    parent = search_nodes.alias("parent_node")
    return select(
        search_nodes.c.id, search_nodes.c.trajectory_id, search_nodes.c.step_number, search_nodes.c.tree,
        search_nodes.c.depth, search_nodes.c.visits, search_nodes.c.value, search_nodes.c.advantage,
        search_nodes.c.created_at, search_nodes.c.updated_at, steps.c.game_state_id,
        steps.c.parent_trajectory_id, steps.c.parent_step_number, parent.c.id.label("parent_id"),
    ).select_from(
        search_nodes.join(
            steps,
            and_(steps.c.trajectory_id == search_nodes.c.trajectory_id,
                 steps.c.step_number == search_nodes.c.step_number),
        ).outerjoin(
            parent,
            and_(parent.c.trajectory_id == steps.c.parent_trajectory_id,
                 parent.c.step_number == steps.c.parent_step_number),
        )
    )  # fmt: skip


def _stored_node(row: Sequence[Any]) -> StoredNode:
    return StoredNode(*row)


class SQLSearch(SQLCore, SearchStore):
    """Search nodes (atomic statistics updates) and FLE versions."""

    def _bump_search_stats(
        self,
        conn: Connection,
        node_id: int,
        add_visits: int = 0,
        add_value: float = 0.0,
        set_value: float | None = None,
        set_advantage: float | None = None,
        set_visits: int | None = None,
    ) -> int:
        """THE one statement that changes a ``search_nodes`` row: add to visits and value, or set
        value / advantage, in a single UPDATE (atomic under concurrent writers: the increment is
        computed by the database, not read-modify-written). Returns the rows changed (0 or 1)."""
        values: dict[str, Any] = {"updated_at": now_us()}
        if set_visits is not None:
            values["visits"] = set_visits
        elif add_visits:
            values["visits"] = search_nodes.c.visits + add_visits
        if set_value is not None:
            values["value"] = set_value
        elif add_value:
            values["value"] = func.coalesce(search_nodes.c.value, 0.0) + add_value
        if set_advantage is not None:
            values["advantage"] = set_advantage
        this = search_nodes.c.id == node_id
        versioned.archive(conn, search_nodes, this)
        values["valid_from_seq"] = versioned.CURRENT_SEQ
        return int(conn.execute(update(search_nodes).where(this).values(**values)).rowcount)

    @_restartable
    def bump_search_stats(
        self,
        node_id: int,
        add_visits: int,
        add_value: float,
        set_value: float | None,
        set_advantage: float | None,
        set_visits: int | None = None,
    ) -> StoredNode:
        with self._commit() as conn:
            if not self._bump_search_stats(conn, node_id, add_visits, add_value, set_value, set_advantage, set_visits):
                raise NotFoundError(f"search node {node_id} does not exist")
            return _stored_node(conn.execute(_node_select().where(search_nodes.c.id == node_id)).one())

    @_restartable
    def visit(self, node_id: int, children: int) -> StoredNode:
        with self._commit() as conn:
            node = conn.execute(_node_select().where(search_nodes.c.id == node_id)).first()
            if node is None:
                raise NotFoundError(f"search node {node_id} does not exist")
            self._bump_search_stats(conn, node_id, add_visits=children)
            kids = conn.execute(
                select(search_nodes.c.id, search_nodes.c.value)
                .select_from(
                    search_nodes.join(
                        steps,
                        and_(steps.c.trajectory_id == search_nodes.c.trajectory_id,
                             steps.c.step_number == search_nodes.c.step_number),
                    )
                )
                .where(
                    steps.c.parent_trajectory_id == node.trajectory_id,
                    steps.c.parent_step_number == node.step_number,
                    search_nodes.c.value.is_not(None),
                )
            ).all()  # fmt: skip
            if kids:
                mean = sum(kid.value for kid in kids) / len(kids)
                for kid in kids:
                    self._bump_search_stats(conn, kid.id, set_advantage=kid.value - mean)
            return _stored_node(conn.execute(_node_select().where(search_nodes.c.id == node_id)).one())

    @_idempotent
    def load_node(self, node_id: int | None = None, step: tuple[str, int] | None = None) -> StoredNode | None:
        query = _node_select()
        if node_id is not None:
            query = query.where(search_nodes.c.id == node_id)
        elif step is not None:
            query = query.where(search_nodes.c.trajectory_id == step[0], search_nodes.c.step_number == step[1])
        else:
            raise ValueError("load_node needs a node id or a step")
        with self._read() as conn:
            row = conn.execute(query).first()
        return _stored_node(row) if row is not None else None

    @_idempotent
    def find_nodes(self, query: NodeQuery) -> list[StoredNode]:
        n = search_nodes.c
        conditions = []
        if query.tree is not None:
            conditions.append(n.tree == query.tree)
        if query.trajectory_id is not None:
            conditions.append(n.trajectory_id == query.trajectory_id)
        if query.with_value or query.per_depth is not None:
            conditions.append(n.value.is_not(None))
        if query.with_advantage:
            conditions.append(n.advantage.is_not(None))
        if query.with_state:
            conditions += [steps.c.game_state_id.is_not(None), ~thinned_state(steps.c.game_state_id)]
        select_nodes = _node_select().where(*conditions)
        if query.per_depth is not None:
            rank = func.row_number().over(partition_by=n.depth, order_by=(n.value.desc(), n.id)).label("rank")
            ranked = select_nodes.add_columns(rank).subquery("ranked")
            select_nodes = (
                select(*[c for c in ranked.c if c.name != "rank"])
                .where(ranked.c.rank <= query.per_depth)
                .order_by(ranked.c.depth, ranked.c.value.desc(), ranked.c.id)
            )
        elif query.order == "recent":
            select_nodes = select_nodes.order_by(n.id.desc())
        elif query.order == "step":
            select_nodes = select_nodes.order_by(n.step_number.desc())
        else:
            select_nodes = select_nodes.order_by(self._descending_nulls_last(n.value), n.id)
        if query.limit is not None:
            select_nodes = select_nodes.limit(query.limit)
        with self._read() as conn:
            return [_stored_node(row) for row in conn.execute(select_nodes)]

    @_idempotent
    def tree_summary(self, tree: str) -> tuple[int, int | None]:
        with self._read() as conn:
            count, deepest = conn.execute(
                select(func.count(), func.max(search_nodes.c.depth)).where(search_nodes.c.tree == tree)
            ).one()
        return int(count), None if deepest is None else int(deepest)

    @_idempotent
    def tree_values(self, tree_prefix: str, tree: str | None) -> list[float]:
        n = search_nodes.c
        where = n.tree == tree if tree is not None else n.tree.startswith(tree_prefix, autoescape=True)
        with self._read() as conn:
            return [
                float(v)
                for v in conn.execute(select(n.value).where(where, n.value.is_not(None)).order_by(n.id)).scalars()
            ]

    #: How many times :meth:`allocate_version` reads the largest version again after losing a
    #: race for the next number, before it gives up with ConflictError.
    allocate_attempts = 20

    @_restartable
    def allocate_version(self, description: str | None, model: str | None) -> int:
        for _ in range(self.allocate_attempts):
            try:
                with self._commit() as conn:
                    version = int(
                        conn.execute(select(func.coalesce(func.max(fle_versions.c.version), 0) + 1)).scalar_one()
                    )
                    conn.execute(
                        insert(fle_versions).values(
                            version=version,
                            version_description=description,
                            model=model,
                            created_at=now_us(),
                            valid_from_seq=versioned.CURRENT_SEQ,
                        )
                    )
                return version
            except ConflictError:
                # A concurrent allocator committed the same number first (PostgreSQL, MySQL): read
                # again. A missing reference is a NotFoundError, never retried.
                continue
        raise ConflictError(
            f"could not allocate an FLE version: the next number was taken {self.allocate_attempts} times in a row "
            "(or the version table refuses every insert); nothing was written"
        )

    @_idempotent
    def register_version(self, version: int, description: str | None, model: str | None) -> None:
        stmt, _ = self._stamped(fle_versions)
        with self._commit() as conn:
            conn.execute(
                self._insert_ignore(stmt, fle_versions),
                {"version": version, "version_description": description, "model": model, "created_at": now_us()},
            )

    @_idempotent
    def load_version(self, version: int | None) -> tuple[int, str | None, str | None] | None:
        v = fle_versions.c
        query = select(v.version, v.version_description, v.model)
        query = query.where(v.version == version) if version is not None else query.order_by(v.version.desc())
        with self._read() as conn:
            row = conn.execute(query.limit(1)).first()
        return (int(row[0]), row[1], row[2]) if row is not None else None
