"""Versioned rows for point-in-time recovery, in SQLAlchemy Core (every dialect alike).

The model (see ``fle_db.schema``): a write transaction takes commit sequence number N from
``log_head``; rows it inserts carry ``valid_from_seq = N``; before it updates or deletes a row it
copies the old image into the table's history twin with ``valid_to_seq = N``. The database as
committed at S is every live row with ``valid_from_seq <= S`` plus every history row with
``valid_from_seq <= S < valid_to_seq``. Nothing here needs server configuration (no WAL
archiving) and it means the same on SQLite, PostgreSQL and MySQL/MariaDB. The commit instant
comes from the dialect's clock hook (the client's clock on SQLite, the server's on PostgreSQL and
MySQL, so writers on many hosts share one time line).

Reading a past state is a query; rewinding in place is itself one new commit that archives what
changed after S and brings back what was valid at S, so history stays exact through restores.
InnoDB checks foreign keys row by row, so a rewind re-inserts keyframes before the deltas naming
them and a deletion can cut delta links first (``unlink``; the dialect's
``unlink_bases_before_delete``). The HistoryStore role built on this is :mod:`.history`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    insert,
    literal,
    select,
    true,
    union_all,
    update,
)

from ...schema import HISTORY, VERSIONED_TABLES, log_head, trajectories

#: Tables whose rows reference rows of the same table through a "base" (delta) column: loading in
#: chunks puts the rows without a base first, so every base exists before what needs it.
_BASE_COLUMN = {"blobs": "base_id", "steps": "base_step_number", "agent_outputs": "base_step_number",
                "environment_feedbacks": "base_step_number"}  # fmt: skip
#: Trajectories reference their parent trajectory: loaded with the parent left empty, then linked.
LINEAGE_COLUMNS = ("parent_trajectory_id", "parent_step_number")


#: This transaction's commit number, once it took one (in SQL: rows are stamped on the server, so
#: the number never has to travel to the client before the rows go out).
CURRENT_SEQ = select(log_head.c.seq).where(log_head.c.id == 1).scalar_subquery()


def archive(conn: Connection, table: Table, condition: ColumnElement[bool]) -> None:
    """Copy the rows of ``table`` matching ``condition`` into its history, ending at this commit.

    Rows written by this same commit were never visible to anybody else and are skipped."""
    history = HISTORY[table.name]
    names = [c.name for c in table.columns]
    conn.execute(
        insert(history).from_select(
            [*names, "valid_to_seq"],
            select(*table.columns, CURRENT_SEQ).where(condition, table.c.valid_from_seq < CURRENT_SEQ),
        )
    )


def retire(conn: Connection, table: Table, condition: ColumnElement[bool], unlink: bool = False) -> int:
    """Archive, then delete, the rows matching ``condition``; returns how many were deleted.
    ``unlink``: see :func:`remove`."""
    archive(conn, table, condition)
    return remove(conn, table, condition, unlink)


def remove(conn: Connection, table: Table, condition: ColumnElement[bool], unlink: bool) -> int:
    """Delete the (already archived) rows matching ``condition``. With ``unlink`` their delta
    links are cut first: an engine that checks foreign keys row by row (InnoDB) would otherwise
    refuse a DELETE that reaches a keyframe before the deltas naming it."""
    base = _BASE_COLUMN.get(table.name)
    if unlink and base is not None:
        conn.execute(update(table).where(condition, table.c[base].is_not(None)).values({base: None}))
    return int(conn.execute(delete(table).where(condition)).rowcount)


def _versions_at(table: Table, seq: int) -> Select[Any]:
    """History rows of ``table`` valid at ``seq``, with the live table's column names."""
    history = HISTORY[table.name]
    return select(*[history.c[c.name] for c in table.columns]).where(
        history.c.valid_from_seq <= seq, history.c.valid_to_seq > seq
    )


def rows_at(table: Table, seq: int | None) -> Select[Any]:
    """The rows of ``table`` as committed at ``seq`` (None: now), in an order that is safe to
    insert chunk by chunk (rows without a base first)."""
    if seq is None:
        query: Any = select(*table.columns)
        source: Any = table
    else:
        live = select(*table.columns).where(table.c.valid_from_seq <= seq)
        source = union_all(live, _versions_at(table, seq)).subquery()
        query = select(*source.c)
    return _bases_first(query, table, source)


def history_at(table: Table, seq: int | None) -> Select[Any]:
    """The history rows that had already ended at ``seq`` (None: all of them)."""
    history = HISTORY[table.name]
    query = select(*history.columns)
    return query if seq is None else query.where(history.c.valid_to_seq <= seq)


def rewind(conn: Connection, seq: int, new_seq: int, unlink: bool = False) -> dict[str, int]:
    """Make the live tables equal to their state at ``seq``, as commit ``new_seq``.

    Per table, parents first: archive the rows changed after ``seq``, bring back rows deleted
    since (insert) and restore rows updated since (update in place, so no foreign key ever points
    at a missing row); then, children first, delete rows created after ``seq``. Returns the rows
    changed per table."""
    changed: dict[str, int] = {}
    after = {t.name: and_(t.c.valid_from_seq > seq, t.c.valid_from_seq < new_seq) for t in VERSIONED_TABLES}
    for table in VERSIONED_TABLES:
        archive(conn, table, after[table.name])
    for table in VERSIONED_TABLES:
        key = list(table.primary_key.columns)
        past = _versions_at(table, seq).subquery()
        same_key = and_(*[table.c[c.name] == past.c[c.name] for c in key])
        values = {c.name: past.c[c.name] for c in table.columns if c.name not in {k.name for k in key}}
        values["valid_from_seq"] = literal(new_seq, BigInteger)
        restored = conn.execute(
            insert(table)
            .execution_options(preserve_rowcount=True)  # INSERT's rowcount is otherwise not kept
            .from_select(
                [c.name for c in table.columns],
                _bases_first(
                    select(*[values.get(c.name, past.c[c.name]) for c in table.columns]).where(
                        ~exists().where(same_key)
                    ),
                    table,
                    past,
                ),
            )
        ).rowcount
        updated = conn.execute(update(table).values(values).where(same_key, after[table.name])).rowcount
        changed[str(table.name)] = int(restored) + int(updated)
    for table in reversed(VERSIONED_TABLES):
        changed[str(table.name)] += remove(conn, table, after[table.name], unlink)
    return changed


def _bases_first(query: Select[Any], table: Table, source: Any) -> Select[Any]:
    """Order rows without a delta base first, so an INSERT ... SELECT never writes a delta before
    its keyframe (InnoDB checks foreign keys row by row)."""
    base = _BASE_COLUMN.get(table.name)
    return query if base is None else query.order_by(case((source.c[base].is_(None), 0), else_=1))


def delete_all(conn: Connection, unlink: bool = False) -> None:
    """Archive and delete every live row, children first (one statement per table; ``unlink``:
    see :func:`remove`)."""
    for table in reversed(VERSIONED_TABLES):
        retire(conn, table, true(), unlink)


def load_rows(
    conn: Connection,
    table: Table,
    chunks: Iterator[list[dict[str, Any]]],
    seq: int | None,
    lineage: list[dict[str, Any]],
) -> Iterator[int]:
    """Insert chunks of ``table`` rows (from :func:`rows_at` of another database); with ``seq``,
    as new versions of commit ``seq``. Trajectories go in without their parent (which may come in
    a later chunk): their links are appended to ``lineage`` for :func:`link_lineage`. Yields the
    rows inserted per chunk."""
    for chunk in chunks:
        rows = chunk
        if seq is not None:
            rows = [{**row, "valid_from_seq": seq} for row in rows]
        if table is trajectories:
            lineage += [
                {"tid": row["id"], **{c: row[c] for c in LINEAGE_COLUMNS}}
                for row in rows
                if row["parent_trajectory_id"] is not None
            ]
            rows = [{**row, **dict.fromkeys(LINEAGE_COLUMNS)} for row in rows]
        if rows:
            conn.execute(insert(table), rows)
        yield len(rows)


def link_lineage(conn: Connection, lineage: list[dict[str, Any]]) -> None:
    """Set the parents that :func:`load_rows` left out (rows of this same transaction: there is
    no earlier version to archive)."""
    if lineage:
        conn.execute(
            update(trajectories)
            .where(trajectories.c.id == bindparam("tid"))
            .values(
                parent_trajectory_id=bindparam("parent_trajectory_id"),
                parent_step_number=bindparam("parent_step_number"),
            ),
            lineage,
        )


__all__ = ["archive", "delete_all", "history_at", "link_lineage", "load_rows", "remove", "retire", "rewind", "rows_at"]
