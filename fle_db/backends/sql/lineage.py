"""Lineage, selection and deletion of the SQL backends: step ancestry and children, fork-tree
walks, deleting trajectories and cleanup with garbage collection of the states and blobs nothing
uses any more (part of the CheckpointStore role)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    case,
    cast,
    exists,
    func,
    literal,
    or_,
    select,
)

from ...errors import (
    DependencyError,
    NotFoundError,
)
from ...schema import (
    TRAJECTORY_CHILD_TABLES,
    blobs,
    game_state_parts,
    game_states,
    steps,
    trajectories,
)
from ..base import (
    CleanupCriteria,
    TrajectoryFilter,
)
from . import versioned
from .core import _VERIFY_CHUNK, SQLCore, _idempotent, _restartable
from .idlist import in_ids

#: What a cleanup report counts, besides bytes.
_TALLIED = ("trajectories", "steps", "agent_outputs", "environment_feedbacks", "trajectory_metadata", "search_nodes",
            "game_states", "blobs")  # fmt: skip


#: Lineage walks stop after this many hops (a guard: stored parents always precede children).
_MAX_LINEAGE = 1_000_000


def _selected(table: Any, criteria: TrajectoryFilter | CleanupCriteria) -> list[Any]:
    """The WHERE conditions of ``criteria`` on ``table`` (``trajectories`` or an alias of it): the
    id, task and agent-type criteria both filters share, and an export's creation window."""
    conditions = []
    if criteria.trajectory_ids is not None:
        conditions.append(in_ids(table.c.id, criteria.trajectory_ids))
    if criteria.task is not None:
        conditions.append(table.c.task == criteria.task)
    if criteria.agent_type is not None:
        conditions.append(table.c.agent_type == criteria.agent_type)
    if isinstance(criteria, TrajectoryFilter):
        if criteria.since_us is not None:
            conditions.append(table.c.created_at >= criteria.since_us)
        if criteria.until_us is not None:
            conditions.append(table.c.created_at < criteria.until_us)
        if criteria.success is not None:
            conditions.append(table.c.success == criteria.success)
        if criteria.min_total_reward is not None:
            conditions.append(table.c.total_reward >= criteria.min_total_reward)
    return conditions


def _unused(conn: Connection, query: Select[Any]) -> list[Any]:
    """The rows of ``query`` (shared rows that nothing references any more), locked against a
    concurrent writer that is about to reference them again: the rows are locked first, then
    asked for again, so a reference committed while the lock was awaited counts (a writer that
    comes later waits for this transaction and finds the row gone: MissingReferenceError, which
    the client answers by writing once more whole). Where writers queue anyway (SQLite) the lock
    is a no-op."""
    conn.execute(query.with_for_update()).all()
    return list(conn.execute(query).all())


class SQLLineage(SQLCore):
    """Lineage queries, fork-tree walks, deletion and cleanup."""

    @_restartable
    def delete_trajectory(self, trajectory_id: str, cascade: bool) -> list[str]:
        with self._commit() as conn:
            if not self._exists(conn, trajectory_id):
                raise NotFoundError(f"trajectory {trajectory_id!r} does not exist")
            order, frontier = [trajectory_id], [trajectory_id]
            while frontier:
                forks = self._dependents(conn, frontier)
                forks = [f for f in forks if f not in order]
                if forks and not cascade:
                    shown = ", ".join(repr(f) for f in forks[:10])
                    raise DependencyError(
                        f"trajectory {trajectory_id!r} has forks that depend on it ({shown}"
                        f"{', ...' if len(forks) > 10 else ''}); delete them first or pass cascade=True"
                    )
                order.extend(forks)
                frontier = forks
            tally: Counter[str] = Counter()
            for tid in reversed(order):  # forks before their parents (foreign keys)
                self._delete_one(conn, tid, tally)
        return order

    @_restartable
    def cleanup(self, criteria: CleanupCriteria, dry_run: bool) -> dict[str, Any]:
        with self._commit() as conn:
            selected = self._select_for_cleanup(conn, criteria)
            doomed, kept = self._lineage_safe(conn, selected)
            tally: Counter[str] = Counter()
            for tid in doomed:
                self._delete_one(conn, tid, tally, measure=True)
            if dry_run:
                conn.rollback()
        return {
            "dry_run": dry_run,
            "trajectories": sorted(doomed),
            "kept_for_lineage": sorted(kept),
            "rows": {table: tally[table] for table in _TALLIED},
            "bytes_freed": tally["bytes"],
        }

    def _select_for_cleanup(self, conn: Connection, criteria: CleanupCriteria) -> list[str]:
        """Ids of the trajectories every given criterion selects (AND)."""
        query = select(
            trajectories.c.id, trajectories.c.task, trajectories.c.total_reward, trajectories.c.created_at
        ).where(*_selected(trajectories, criteria))
        if criteria.before_us is not None:
            # Old = neither the trajectory nor any of its steps was written since the cutoff.
            query = query.where(
                trajectories.c.updated_at < criteria.before_us,
                ~exists().where(steps.c.trajectory_id == trajectories.c.id, steps.c.created_at >= criteria.before_us),
            )
        rows = conn.execute(query).all()
        if criteria.keep_best_per_task is None:
            return [row.id for row in rows]
        by_task: dict[str | None, list[Any]] = {}
        for row in rows:
            by_task.setdefault(row.task, []).append(row)
        doomed = []
        for group in by_task.values():
            # Best first: highest total_reward (None lowest), then the newest.
            group.sort(key=lambda r: (r.total_reward is not None, r.total_reward or 0.0, r.created_at), reverse=True)
            doomed += [row.id for row in group[criteria.keep_best_per_task :]]
        return doomed

    def _lineage_safe(self, conn: Connection, selected: list[str]) -> tuple[list[str], set[str]]:
        """Split ``selected`` into what can go (in a safe order: dependents first) and what must
        stay because a surviving trajectory forks from it, directly or through kept ones."""
        doomed = set(selected)
        dependents = {tid: set(self._dependents(conn, [tid])) for tid in selected}
        kept: set[str] = set()
        changed = True
        while changed:
            changed = False
            for tid in list(doomed):
                if dependents[tid] - doomed:
                    doomed.discard(tid)
                    kept.add(tid)
                    changed = True
        order: list[str] = []
        remaining = set(doomed)
        while remaining:
            ready = sorted(t for t in remaining if not dependents[t] & remaining)
            order += ready
            remaining -= set(ready)
        return order, kept

    def _dependents(self, conn: Connection, ids: list[str]) -> list[str]:
        forks = conn.execute(select(trajectories.c.id).where(trajectories.c.parent_trajectory_id.in_(ids)))
        children = conn.execute(
            select(steps.c.trajectory_id)
            .where(steps.c.parent_trajectory_id.in_(ids), steps.c.trajectory_id.not_in(ids))
            .distinct()
        )
        return list(dict.fromkeys([*forks.scalars(), *children.scalars()]))

    def _delete_one(self, conn: Connection, tid: str, tally: Counter[str], measure: bool = False) -> None:
        """Delete one trajectory's rows and the states and blobs nothing else uses, adding the
        rows removed to ``tally`` (and, with ``measure``, their payload bytes: one more query per
        table, which only cleanup's report needs)."""
        state_ids = list(
            conn.execute(
                select(steps.c.game_state_id)
                .where(steps.c.trajectory_id == tid, steps.c.game_state_id.is_not(None))
                .distinct()
            ).scalars()
        )
        for table in (*TRAJECTORY_CHILD_TABLES, trajectories):
            key = table.c.id if table is trajectories else table.c.trajectory_id
            if measure and "body" in table.c:
                tally["bytes"] += int(  # MySQL's SUM is a DECIMAL
                    conn.execute(
                        select(func.coalesce(func.sum(func.length(table.c.body)), 0)).where(key == tid)
                    ).scalar_one()
                )
            tally[table.name] += versioned.retire(conn, table, key == tid, self.unlink_bases_before_delete)
        self._collect_garbage(conn, state_ids, tally)

    def _collect_garbage(self, conn: Connection, state_ids: list[str], tally: Counter[str]) -> None:
        """Delete the given states that no step uses any more, then their blobs that no state
        uses and no delta needs as base (deltas first, then the keyframes they freed)."""
        for i in range(0, len(state_ids), _VERIFY_CHUNK):
            chunk = state_ids[i : i + _VERIFY_CHUNK]
            orphans = [
                row[0]
                for row in _unused(
                    conn,
                    select(game_states.c.id).where(
                        game_states.c.id.in_(chunk), ~exists().where(steps.c.game_state_id == game_states.c.id)
                    ),
                )
            ]
            if not orphans:
                continue
            blob_ids = set(
                conn.execute(
                    select(game_state_parts.c.blob_id).where(game_state_parts.c.state_id.in_(orphans))
                ).scalars()
            )
            versioned.retire(conn, game_state_parts, game_state_parts.c.state_id.in_(orphans))
            versioned.retire(conn, game_states, game_states.c.id.in_(orphans))
            tally["game_states"] += len(orphans)
            dependent = blobs.alias("dependent")
            while blob_ids:
                unused = _unused(
                    conn,
                    select(blobs.c.id, blobs.c.base_id, func.length(blobs.c.body)).where(
                        blobs.c.id.in_(list(blob_ids)),
                        ~exists().where(game_state_parts.c.blob_id == blobs.c.id),
                        ~exists().where(dependent.c.base_id == blobs.c.id),
                    ),
                )
                if unused:
                    versioned.retire(conn, blobs, blobs.c.id.in_([row[0] for row in unused]))
                tally["blobs"] += len(unused)
                tally["bytes"] += sum(row[2] for row in unused)
                blob_ids = {row[1] for row in unused if row[1] is not None}

    @_idempotent
    def lineage(self, trajectory_id: str, step_number: int) -> list[tuple[str, int]]:
        s, prev, t = steps.alias("s"), steps.alias("prev"), trajectories.alias("t")
        # Plain VARCHAR / BIGINT on both sides of the recursion: PostgreSQL wants equal types.
        seed = select(
            cast(literal(trajectory_id), String()).label("tid"),
            cast(literal(step_number), BigInteger()).label("n"),
            cast(literal(0), Integer()).label("hops"),
        )
        path = seed.cte("path", recursive=True)
        explicit = s.c.parent_trajectory_id.is_not(None)
        has_prev = prev.c.step_number.is_not(None)
        next_tid = case((explicit, s.c.parent_trajectory_id), (has_prev, s.c.trajectory_id),
                        else_=t.c.parent_trajectory_id)  # fmt: skip
        next_n = case((explicit, s.c.parent_step_number), (has_prev, s.c.step_number - 1),
                      else_=t.c.parent_step_number)  # fmt: skip
        hop = (
            select(cast(next_tid, String()), cast(next_n, BigInteger()), cast(path.c.hops + 1, Integer()))
            .select_from(
                path.join(s, and_(s.c.trajectory_id == path.c.tid, s.c.step_number == path.c.n))
                .join(t, t.c.id == s.c.trajectory_id)
                .outerjoin(prev, and_(prev.c.trajectory_id == s.c.trajectory_id,
                                      prev.c.step_number == s.c.step_number - 1))
            )
            .where(next_tid.is_not(None), path.c.hops < _MAX_LINEAGE)
        )  # fmt: skip
        path = path.union_all(hop)
        query = (
            select(path.c.tid, path.c.n)
            .select_from(path.join(steps, and_(steps.c.trajectory_id == path.c.tid, steps.c.step_number == path.c.n)))
            .order_by(path.c.hops.desc())
        )
        with self._read() as conn:
            rows = [(str(r[0]), int(r[1])) for r in conn.execute(query)]
        if not rows or rows[-1] != (trajectory_id, step_number):
            raise NotFoundError(f"step {step_number} of trajectory {trajectory_id!r} does not exist")
        return rows

    @_idempotent
    def children(self, trajectory_id: str, step_number: int) -> list[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        with self._read() as conn:
            explicit = conn.execute(
                select(steps.c.trajectory_id, steps.c.step_number).where(
                    steps.c.parent_trajectory_id == trajectory_id, steps.c.parent_step_number == step_number
                )
            )
            found.update((str(r[0]), int(r[1])) for r in explicit)
            following = conn.execute(
                select(steps.c.step_number).where(
                    steps.c.trajectory_id == trajectory_id,
                    steps.c.step_number == step_number + 1,
                    steps.c.parent_trajectory_id.is_(None),
                )
            ).first()
            if following is not None:
                found.add((trajectory_id, step_number + 1))
            # A fork's first step (no explicit parent) descends from the fork point.
            first = (
                select(steps.c.trajectory_id, func.min(steps.c.step_number).label("first"))
                .select_from(trajectories.join(steps, steps.c.trajectory_id == trajectories.c.id))
                .where(
                    trajectories.c.parent_trajectory_id == trajectory_id,
                    trajectories.c.parent_step_number == step_number,
                )
                .group_by(steps.c.trajectory_id)
                .subquery("first")
            )
            forks = conn.execute(
                select(first.c.trajectory_id, first.c.first).select_from(
                    first.join(steps, and_(steps.c.trajectory_id == first.c.trajectory_id,
                                           steps.c.step_number == first.c.first))
                ).where(steps.c.parent_trajectory_id.is_(None))
            )  # fmt: skip
            found.update((str(r[0]), int(r[1])) for r in forks)
        return sorted(found)

    @_idempotent
    def branch_points(self, trajectory_id: str) -> list[int]:
        forked = select(trajectories.c.parent_step_number).where(
            trajectories.c.parent_trajectory_id == trajectory_id, trajectories.c.parent_step_number.is_not(None)
        )
        named = select(steps.c.parent_step_number).where(
            steps.c.parent_trajectory_id == trajectory_id, steps.c.parent_step_number.is_not(None)
        )
        with self._read() as conn:
            found = {int(n) for n in conn.execute(forked.union(named)).scalars()}
        return sorted(found)

    def iter_selected_trajectories(self, criteria: TrajectoryFilter) -> Iterator[str]:
        parent = trajectories.alias("parent")
        selected = _selected(trajectories, criteria)
        # Roots of the walk: selected trajectories whose parent is absent or not selected.
        roots = (
            select(trajectories.c.id)
            .where(
                *selected,
                or_(
                    trajectories.c.parent_trajectory_id.is_(None),
                    ~exists().where(parent.c.id == trajectories.c.parent_trajectory_id, *_selected(parent, criteria)),
                ),
            )
            .order_by(trajectories.c.id)
            .limit(_VERIFY_CHUNK)
        )
        forks = (
            select(trajectories.c.id)
            .where(*selected, trajectories.c.parent_trajectory_id == bindparam("parent"))
            .order_by(trajectories.c.id)
        )
        last: str | None = None
        while True:
            page = self._ids(roots if last is None else roots.where(trajectories.c.id > last), {})
            for root in page:
                pending = [iter([root])]  # depth-first: a fork right after its parent's subtree starts
                while pending:
                    tid = next(pending[-1], None)
                    if tid is None:
                        pending.pop()
                        continue
                    yield tid
                    pending.append(iter(self._ids(forks, {"parent": tid})))
            if len(page) < _VERIFY_CHUNK:
                return
            last = page[-1]

    @_idempotent
    def _ids(self, query: Any, params: dict[str, Any]) -> list[str]:
        with self._read() as conn:
            return list(conn.execute(query, params).scalars())
