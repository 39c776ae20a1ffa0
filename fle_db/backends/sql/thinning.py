"""Fork-aware thinning of the SQL backends (part of the CheckpointStore role): drop the game
states of the steps nothing needs to resume from, keep every step's records.

A step's state is kept when the step is its trajectory's latest (or the latest that has a
state), a fork point (a trajectory forks from it, or a step names it as explicit parent), a search
node (with ``thin_search_nodes``: one of the best ``keep_best_per_depth`` of its depth in its
tree) or its number is a multiple of ``keep_every``. A state several steps share (content
addressing) is dropped only when every step naming it is dropped. A dropped state keeps its row,
marked (see :mod:`fle_db.storage.thinning`), and loses its parts; blobs no remaining part uses are
deleted, and kept blobs that were deltas of a deleted keyframe are re-encoded first, so no kept
state depends on a dropped one.

Everything is one commit of the point-in-time history: what it removes or rewrites is archived,
so ``restore_to`` an instant before it gives the full data until the history is pruned.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    bindparam,
    exists,
    func,
    select,
    update,
)

from ...schema import blobs, game_state_parts, game_states, search_nodes, steps, trajectories
from ...storage.engine import CODEC_MANIFEST, BlobCache, StateDecoder, StoredBlob
from ...storage.thinning import THINNED_BODY, rebase
from ..base import CleanupCriteria, ThinRule
from . import versioned
from .core import _VERIFY_CHUNK, _idempotent, _restartable
from .idlist import in_ids
from .lineage import SQLLineage, _unused

#: Trajectories handled per round of queries.
_TRAJECTORY_CHUNK = 100

Step = tuple[str, int]


def thinned_state(state_id: ColumnElement[Any]) -> ColumnElement[bool]:
    """Whether the state ``state_id`` (a column naming a game state) was thinned: its row is
    marked and it has no parts (saving it again brings its parts back)."""
    state, part = game_states.alias("thinned"), game_state_parts.alias("thinned_part")
    return exists().where(
        state.c.id == state_id, state.c.body == THINNED_BODY, ~exists().where(part.c.state_id == state.c.id)
    )


class SQLThinning(SQLLineage):
    """``thin``: drop game states, keep records, re-encode what depended on what goes."""

    @_restartable
    def thin(self, criteria: CleanupCriteria, rule: ThinRule, dry_run: bool) -> dict[str, Any]:
        tally: Counter[str] = Counter()
        decoder = StateDecoder(BlobCache(16 * 1024 * 1024))
        with self._commit() as conn:
            selected = sorted(self._select_for_cleanup(conn, criteria))
            for i in range(0, len(selected), _TRAJECTORY_CHUNK):
                dropped = self._steps_to_thin(conn, selected[i : i + _TRAJECTORY_CHUNK], rule)
                self._drop_states(conn, dropped, tally, decoder)
            if dry_run:
                conn.rollback()
        return {
            "dry_run": dry_run,
            "trajectories": selected,
            "steps_thinned": tally["steps"],
            "game_states": tally["game_states"],
            "blobs_deleted": tally["blobs"],
            "blobs_reencoded": tally["reencoded"],
            "bytes_freed": tally["freed"],
            "bytes_freed_now": tally["freed"] - tally["archived"],
        }

    @_idempotent
    def thinned_states(self, state_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self._read() as conn:
            for chunk in _chunks(sorted(set(state_ids))):
                found.update(
                    conn.execute(
                        select(game_states.c.id).where(game_states.c.id.in_(chunk), thinned_state(game_states.c.id))
                    ).scalars()
                )
        return found

    def _steps_to_thin(self, conn: Connection, tids: list[str], rule: ThinRule) -> dict[Step, str]:
        """``{(trajectory, step): state id}`` of the steps of ``tids`` whose state ``rule`` drops."""
        rows = conn.execute(
            select(steps.c.trajectory_id, steps.c.step_number, steps.c.game_state_id).where(
                in_ids(steps.c.trajectory_id, tids)
            )
        ).all()
        # The latest step, and the latest step that has a state (where a run whose last step
        # saved none resumes its game from).
        latest: dict[str, int] = {}
        latest_state: dict[str, int] = {}
        for tid, number, state in rows:
            latest[tid] = max(latest.get(tid, number), number)
            if state is not None:
                latest_state[tid] = max(latest_state.get(tid, number), number)
        kept = self._fork_points(conn, tids) | {
            (tid, n) for found in (latest, latest_state) for tid, n in found.items()
        }
        nodes = conn.execute(
            select(search_nodes.c.trajectory_id, search_nodes.c.step_number, search_nodes.c.tree).where(
                in_ids(search_nodes.c.trajectory_id, tids)
            )
        ).all()
        if rule.thin_search_nodes:
            kept |= self._best_nodes(conn, {row.tree for row in nodes}, rule.keep_best_per_depth)
        else:
            kept |= {(row.trajectory_id, row.step_number) for row in nodes}
        return {
            (tid, number): state
            for tid, number, state in rows
            if state is not None and number % rule.keep_every != 0 and (tid, number) not in kept
        }

    @staticmethod
    def _fork_points(conn: Connection, tids: list[str]) -> set[Step]:
        """The steps of ``tids`` that a trajectory forks from or a step names as its parent."""
        forked = select(trajectories.c.parent_trajectory_id, trajectories.c.parent_step_number).where(
            in_ids(trajectories.c.parent_trajectory_id, tids), trajectories.c.parent_step_number.is_not(None)
        )
        named = select(steps.c.parent_trajectory_id, steps.c.parent_step_number).where(
            in_ids(steps.c.parent_trajectory_id, tids), steps.c.parent_step_number.is_not(None)
        )
        return {(str(tid), int(n)) for tid, n in conn.execute(forked.union(named))}

    @staticmethod
    def _best_nodes(conn: Connection, trees: set[str], per_depth: int) -> set[Step]:
        """The steps of the ``per_depth`` highest-value nodes of each depth of ``trees`` (ties:
        the older node; nodes without a value are not ranked), as ``get_best_per_depth``."""
        best: set[Step] = set()
        for tree in sorted(trees):
            rows = conn.execute(
                select(search_nodes.c.depth, search_nodes.c.trajectory_id, search_nodes.c.step_number)
                .where(search_nodes.c.tree == tree, search_nodes.c.value.is_not(None))
                .order_by(search_nodes.c.depth, search_nodes.c.value.desc(), search_nodes.c.id)
            ).all()
            taken: Counter[int] = Counter()
            for depth, tid, number in rows:
                if taken[depth] < per_depth:
                    taken[depth] += 1
                    best.add((tid, number))
        return best

    def _drop_states(
        self, conn: Connection, dropped: dict[Step, str], tally: Counter[str], decoder: StateDecoder
    ) -> None:
        """Thin the states of ``dropped`` that no other step needs, then collect their blobs."""
        for chunk in _chunks(sorted(set(dropped.values()))):
            # Whole manifest states only (a thinned one has no parts; a legacy whole-state row is
            # kept), locked before their users are read.
            whole = [
                row[0]
                for row in _unused(
                    conn,
                    select(game_states.c.id).where(
                        game_states.c.id.in_(chunk),
                        game_states.c.codec == CODEC_MANIFEST,
                        exists().where(game_state_parts.c.state_id == game_states.c.id),
                    ),
                )
            ]
            users = conn.execute(
                select(steps.c.trajectory_id, steps.c.step_number, steps.c.game_state_id).where(
                    steps.c.game_state_id.in_(whole)
                )
            ).all()
            needed = {state for tid, number, state in users if (tid, number) not in dropped}
            victims = [state for state in whole if state not in needed]
            if not victims:
                continue
            tally["steps"] += sum(1 for _, _, state in users if state in set(victims))
            blob_ids = set(
                conn.execute(
                    select(game_state_parts.c.blob_id).where(game_state_parts.c.state_id.in_(victims))
                ).scalars()
            )
            versioned.retire(conn, game_state_parts, game_state_parts.c.state_id.in_(victims))
            marked = game_states.c.id.in_(victims)
            tally["archived"] += self._archived_bytes(conn, game_states, marked)
            versioned.archive(conn, game_states, marked)
            conn.execute(
                update(game_states).where(marked).values(body=THINNED_BODY, valid_from_seq=versioned.CURRENT_SEQ)
            )
            tally["freed"] -= len(THINNED_BODY) * len(victims)
            tally["game_states"] += len(victims)
            self._drop_blobs(conn, blob_ids, tally, decoder)

    @staticmethod
    def _archived_bytes(conn: Connection, table: Any, condition: ColumnElement[bool]) -> int:
        """Payload bytes :func:`versioned.archive` is about to copy into history for ``condition``
        (rows this commit wrote already are not archived again). MySQL's SUM is a DECIMAL."""
        total = select(func.coalesce(func.sum(func.length(table.c.body)), 0))
        return int(conn.execute(total.where(condition, table.c.valid_from_seq != versioned.CURRENT_SEQ)).scalar_one())

    def _drop_blobs(self, conn: Connection, blob_ids: set[str], tally: Counter[str], decoder: StateDecoder) -> None:
        """Delete the blobs of ``blob_ids`` that no part uses, re-encoding first the kept blobs
        that are deltas of one of them; then the keyframes the deleted deltas leave unused."""
        dependent = blobs.alias("dependent")
        while blob_ids:
            unused = _unused(
                conn,
                select(blobs.c.id, blobs.c.base_id, func.length(blobs.c.body)).where(
                    blobs.c.id.in_(sorted(blob_ids)), ~exists().where(game_state_parts.c.blob_id == blobs.c.id)
                ),
            )
            gone = {row[0] for row in unused}
            self._rebase_dependents(conn, gone, tally, decoder)
            with_base = [row[0] for row in unused if row[1] is not None]
            for ids in (with_base, sorted(gone.difference(with_base))):  # deltas before keyframes
                if ids:
                    tally["archived"] += self._archived_bytes(conn, blobs, blobs.c.id.in_(ids))
                    tally["blobs"] += versioned.retire(
                        conn, blobs, blobs.c.id.in_(ids), self.unlink_bases_before_delete
                    )
            tally["freed"] += sum(int(row[2]) for row in unused)
            # A keyframe whose last delta went is garbage now, unless a part still uses it.
            bases = {row[1] for row in unused if row[1] is not None} - gone
            blob_ids = {
                row[0]
                for row in conn.execute(
                    select(blobs.c.id).where(
                        blobs.c.id.in_(sorted(bases)), ~exists().where(dependent.c.base_id == blobs.c.id)
                    )
                )
            }

    def _rebase_dependents(self, conn: Connection, gone: set[str], tally: Counter[str], decoder: StateDecoder) -> None:
        """Re-encode the kept blobs that are deltas of a blob in ``gone`` (see
        :func:`fle_db.storage.thinning.rebase`)."""
        base = blobs.alias("base")
        groups: dict[str, list[StoredBlob]] = defaultdict(list)
        for chunk in _chunks(sorted(gone)):
            rows = conn.execute(
                select(blobs.c.id, blobs.c.codec, blobs.c.body, blobs.c.checksum,
                       base.c.id, base.c.codec, base.c.body, base.c.checksum)
                .join_from(blobs, base, base.c.id == blobs.c.base_id)
                .where(base.c.id.in_(chunk), blobs.c.id.not_in(sorted(gone)))
                .order_by(blobs.c.created_at, blobs.c.id)
            )  # fmt: skip
            for r in rows:
                keyframe = StoredBlob(r[4], r[5], bytes(r[6]), r[7])
                groups[r[4]].append(StoredBlob(r[0], r[1], bytes(r[2]), r[3], keyframe))
        if not groups:
            return
        encoded = [row for group in groups.values() for row in rebase(decoder, group)]
        ids = [row.id for row in encoded]
        old = sum(len(blob.body) for group in groups.values() for blob in group)
        tally["archived"] += self._archived_bytes(conn, blobs, blobs.c.id.in_(ids))
        versioned.archive(conn, blobs, blobs.c.id.in_(ids))
        conn.execute(
            update(blobs)
            .where(blobs.c.id == bindparam("blob_id"))
            .values(
                codec=bindparam("new_codec"),
                body=bindparam("new_body"),
                checksum=bindparam("new_checksum"),
                base_id=bindparam("new_base"),
                valid_from_seq=versioned.CURRENT_SEQ,
            ),
            [
                {"blob_id": row.id, "new_codec": row.codec, "new_body": row.body, "new_checksum": row.checksum,
                 "new_base": row.base_id}
                for row in encoded
            ],
        )  # fmt: skip
        tally["reencoded"] += len(encoded)
        tally["freed"] += old - sum(len(row.body) for row in encoded)


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _VERIFY_CHUNK):
        yield items[i : i + _VERIFY_CHUNK]


__all__ = ["SQLThinning", "thinned_state"]
