"""Read statements for browsing: a whole checkpoint in one statement, and pages of trajectories.

Dialect-neutral SQLAlchemy Core, used by :class:`fle_db.backends.sql.SQLBackend`. Nothing here
writes, and nothing needs a column or index beyond the schema's: a trajectory page is ordered
over the ``trajectories`` table (thousands of rows, cheap to sort), and step counts are
aggregated at query time over the steps' primary key, for the page's rows only unless the page
is ordered by the count — so saving a step costs exactly what it did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, case, func, or_, select

from ...schema import agent_outputs, blobs, environment_feedbacks, game_state_parts, game_states, steps, trajectories
from ..base import ListedTrajectory, StoredStep, TrajectoryQuery
from .idlist import in_ids

#: Columns of a stored step-scoped record (see ``sql._step_columns``), without the key.
_RECORD = ("codec", "body", "digest", "base_step_number")
#: The tables of a checkpoint's records, in the order their columns follow the step's.
RECORD_TABLES = (steps, agent_outputs, environment_feedbacks)
#: Where the state's columns start in a checkpoint row: the key (2 columns), the step's game
#: state id, then each record and its keyframe (4 + 4 columns each).
STATE_OFFSET = 3 + len(RECORD_TABLES) * 2 * len(_RECORD)


def checkpoint_statement(latest: bool) -> Select[Any]:
    """One step (``:tid`` and ``:n``, or the highest-numbered of ``:tid`` when ``latest``) with
    its agent output, environment feedback, the keyframe record each delta needs, and its game
    state with every part and each part's base: one row per part, one round trip.

    Row layout: ``trajectory_id, step_number, game_state_id``, then per record table (step,
    agent output, feedback) ``codec, body, digest, base_step_number`` of the record and of its
    keyframe, then from :data:`STATE_OFFSET` the state's ``codec, body`` and per part ``key``,
    the blob's ``id, codec, body, checksum`` and its base's.
    """
    step_columns = [steps.c.trajectory_id, steps.c.step_number, steps.c.game_state_id,
                    *(steps.c[name] for name in _RECORD)]  # fmt: skip
    chosen_steps = select(*step_columns).where(steps.c.trajectory_id == bindparam("tid"))
    if latest:
        chosen_steps = chosen_steps.order_by(steps.c.step_number.desc()).limit(1)
    else:
        chosen_steps = chosen_steps.where(steps.c.step_number == bindparam("n"))
    chosen = chosen_steps.subquery("chosen")
    source: Any = chosen
    columns: list[Any] = [chosen.c.trajectory_id, chosen.c.step_number, chosen.c.game_state_id]
    for table in RECORD_TABLES:
        record = chosen if table is steps else table.alias(f"{table.name}_record")
        keyframe = table.alias(f"{table.name}_keyframe")
        if record is not chosen:
            source = source.outerjoin(
                record,
                and_(record.c.trajectory_id == chosen.c.trajectory_id, record.c.step_number == chosen.c.step_number),
            )
        source = source.outerjoin(
            keyframe,
            and_(keyframe.c.trajectory_id == record.c.trajectory_id,
                 keyframe.c.step_number == record.c.base_step_number),
        )  # fmt: skip
        columns += [record.c[name] for name in _RECORD] + [keyframe.c[name] for name in _RECORD]
    base = blobs.alias("base")
    source = (
        source.outerjoin(game_states, game_states.c.id == chosen.c.game_state_id)
        .outerjoin(game_state_parts, game_state_parts.c.state_id == game_states.c.id)
        .outerjoin(blobs, blobs.c.id == game_state_parts.c.blob_id)
        .outerjoin(base, base.c.id == blobs.c.base_id)
    )
    state = [
        game_states.c.codec, game_states.c.body, game_state_parts.c.key,
        blobs.c.id, blobs.c.codec, blobs.c.body, blobs.c.checksum,
        base.c.id, base.c.codec, base.c.body, base.c.checksum,
    ]  # fmt: skip
    return select(*columns, *state).select_from(source)


def records_of(row: Sequence[Any]) -> list[StoredStep | None]:
    """The step, agent output and feedback of a checkpoint row (None where absent), each with
    its keyframe attached when the row carries it."""
    trajectory_id, number = row[0], row[1]
    found: list[StoredStep | None] = []
    for index in range(len(RECORD_TABLES)):
        at = 3 + index * 2 * len(_RECORD)
        codec, body, digest, base_number = row[at : at + 4]
        if codec is None:
            found.append(None)
            continue
        state_id = row[2] if index == 0 else None
        base = None
        if base_number is not None and row[at + 4] is not None:
            k_codec, k_body, k_digest, k_base = row[at + 4 : at + 8]
            base = StoredStep(trajectory_id, base_number, None, k_codec, bytes(k_body), k_digest, k_base)
        found.append(StoredStep(trajectory_id, number, state_id, codec, bytes(body), digest, base_number, base))
    return found


# -- pages of trajectories -----------------------------------------------------------------
def _step_count(trajectory_id: Any) -> Any:
    """The number of steps of a trajectory: a count over the primary key's prefix."""
    return select(func.count()).where(steps.c.trajectory_id == trajectory_id).scalar_subquery()


def _filters(query: TrajectoryQuery) -> list[ColumnElement[bool]]:
    t = trajectories.c
    conditions: list[ColumnElement[bool]] = []
    for column, value in ((t.task, query.task), (t.agent_type, query.agent_type), (t.success, query.success),
                          (t.parent_trajectory_id, query.parent_trajectory_id)):  # fmt: skip
        if value is not None:
            conditions.append(column == value)
    if query.since_us is not None:
        conditions.append(t.created_at >= query.since_us)
    if query.until_us is not None:
        conditions.append(t.created_at < query.until_us)
    if query.id_contains is not None:
        # Case-insensitive everywhere (SQLite's LIKE is, PostgreSQL's and a binary MySQL
        # collation's are not); ids are ASCII, so lower() is exact.
        conditions.append(func.lower(t.id).contains(query.id_contains.lower(), autoescape=True))
    if query.ids is not None:
        conditions.append(in_ids(t.id, query.ids))
    return conditions


#: Sort keys that may be NULL (sorted last in both directions).
_NULLABLE = frozenset({"task", "agent_type", "total_reward", "success"})


def _ordered(
    source: Any, key: Any, query: TrajectoryQuery, after_key: bool = True
) -> tuple[list[Any], ColumnElement[bool] | None]:
    """ORDER BY terms over ``key`` (a column of ``source``; nulls last in both directions, ties
    by id) and the keyset condition that starts after ``query.after``."""
    ident = source.c.id
    desc = query.descending
    nullable = key.name in _NULLABLE
    terms: list[Any] = [case((key.is_(None), 1), else_=0)] if nullable else []
    terms += [key.desc(), ident.desc()] if desc else [key.asc(), ident.asc()]
    if query.after is None or not after_key:
        return terms, None
    value, last_id = query.after

    def beyond(a: Any, b: Any) -> ColumnElement[bool]:
        return a < b if desc else a > b  # type: ignore[no-any-return]

    if key is ident:
        return terms, beyond(ident, last_id)
    if value is None:  # inside the trailing block of nulls
        return terms, and_(key.is_(None), beyond(ident, last_id))
    bound = bindparam(None, value, type_=key.type)  # booleans compare as values, not as IS TRUE
    after = or_(beyond(key, bound), and_(key == bound, beyond(ident, last_id)))
    return terms, or_(key.is_(None), after) if nullable else after


def list_statement(query: TrajectoryQuery) -> Select[Any]:
    """The page ``query`` selects: ``ListedTrajectory`` columns in order."""
    t = trajectories
    row = [t.c.id, t.c.task, t.c.agent_type]
    rest = [t.c.total_reward, t.c.success, t.c.created_at, t.c.parent_trajectory_id, t.c.parent_step_number,
            t.c.codec, t.c.body]  # fmt: skip
    if query.order_by == "steps":
        # Every selected trajectory's count is needed to order by it: one grouped pass over the
        # steps' key (measured on PostgreSQL with 1,000,000 steps: 365 ms, steady, where a count
        # per trajectory took 440-760 ms until VACUUM had set the visibility map).
        counts = select(steps.c.trajectory_id, func.count().label("n")).group_by(steps.c.trajectory_id).subquery("n")
        counted = (
            select(*row, func.coalesce(counts.c.n, 0).label("steps"), *rest)
            .select_from(t.outerjoin(counts, counts.c.trajectory_id == t.c.id))
            .where(*_filters(query))
            .subquery("counted")
        )
        terms, after = _ordered(counted, counted.c.steps, query)
        page = select(*counted.c).order_by(*terms)
        return (page.where(after) if after is not None else page).limit(query.limit)
    key = {"start_time": t.c.created_at}.get(query.order_by, t.c[query.order_by] if query.order_by in t.c else t.c.id)
    terms, after = _ordered(t, key, query)
    inner = select(*row, *rest).where(*_filters(query), *([after] if after is not None else []))
    # Page first, then count the page's steps: counting is the expensive part.
    paged = inner.order_by(*terms).limit(query.limit).subquery("paged")
    outer_key = paged.c[key.name]
    outer_terms, _ = _ordered(paged, outer_key, query, after_key=False)
    return select(
        paged.c.id, paged.c.task, paged.c.agent_type, _step_count(paged.c.id), *[paged.c[c.name] for c in rest]
    ).order_by(*outer_terms)


def listed(row: Sequence[Any]) -> ListedTrajectory:
    """A :class:`ListedTrajectory` from a row of :func:`list_statement`."""
    success = row[5]
    return ListedTrajectory(
        row[0], row[1], row[2], int(row[3]), row[4], None if success is None else bool(success), int(row[6]),
        row[7], row[8], row[9], bytes(row[10]),
    )  # fmt: skip


def bodies_statement(query: TrajectoryQuery) -> Select[Any]:
    """``(id, codec, body)`` of every trajectory the query's filters select."""
    t = trajectories.c
    return select(t.id, t.codec, t.body).where(*_filters(query))
