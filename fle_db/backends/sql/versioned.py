"""Versioned rows for point-in-time recovery, in SQLAlchemy Core (every dialect alike).

The model (see ``fle_db.schema``): every write transaction has a **commit token**
(:data:`CURRENT_SEQ`), unique but not ordered; rows it inserts carry ``valid_from_seq = token``;
before it updates or deletes a row it copies the old image into the table's history twin with
``valid_to_seq = token``. Its LAST statement before COMMIT logs ``commit_log(seq=token,
committed_at)``, the commit's instant: ``max(server clock in µs, every instant it can see + 1)``.
A commit that depends on another (it read that one's rows, or waited on its row lock) runs its
last statement after that one committed, so it sees that one's log row and gets a later instant.
The **cut at instant T** is every commit logged at or before T: closed under dependencies, and
exactly what a reader saw at T when no commit was in flight. As of T, a live row counts unless its
commit is logged after T, a history row counts if its start commit is not logged after T and its
end commit is (a commit pruned from the log counts as before the horizon). Ordering is thus by
instant, and nothing needs a lock shared by all writers.

The token is the dialect's: on PostgreSQL ``pg_current_xact_id()``, on MySQL/MariaDB a
``UUID_SHORT()`` drawn by the transaction's first statement into a session variable (each plus
``log_head.seq``, a base that keeps tokens above any copied in by a restore), so writers never
wait on a shared row; SQLite (one writer at a time anyway) keeps a counter in ``log_head`` that
each write transaction bumps first. Nothing here needs server
configuration (no WAL archiving) and it means the same on every backend. The commit instant comes
from the dialect's clock hook (the client's clock on SQLite, the server's on PostgreSQL and
MySQL, so writers on many hosts share one time line).

Reading a past state is a query; rewinding in place is itself one new commit (which keeps every
other writer out while it runs) that archives what changed after T and brings back what was valid
at T, so history stays exact through restores. InnoDB checks foreign keys row by row, so a rewind
re-inserts keyframes before the deltas naming them and a deletion can cut delta links first
(``unlink``; the dialect's ``unlink_bases_before_delete``). The HistoryStore role built on this is
:mod:`.history`.
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
    literal_column,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from ...schema import HISTORY, VERSIONED_TABLES, commit_log, log_head, trajectories

#: Tables whose rows reference rows of the same table through a "base" (delta) column: loading in
#: chunks puts the rows without a base first, so every base exists before what needs it.
_BASE_COLUMN = {"blobs": "base_id", "steps": "base_step_number", "agent_outputs": "base_step_number",
                "environment_feedbacks": "base_step_number"}  # fmt: skip
#: Trajectories reference their parent trajectory: loaded with the parent left empty, then linked.
LINEAGE_COLUMNS = ("parent_trajectory_id", "parent_step_number")


class CurrentCommit(FunctionElement[int]):
    """This transaction's commit token, in SQL (rows are stamped on the server, so the token never
    has to travel to the client before the rows go out). Compiled per dialect: by default the
    ``log_head`` counter the transaction bumped first; a backend module registers its own with
    ``sqlalchemy.ext.compiler.compiles``."""

    type = BigInteger()
    inherit_cache = True


#: ``log_head.seq``, in SQL (a literal key: a compiled :class:`CurrentCommit` binds nothing).
HEAD_SEQ = select(log_head.c.seq).where(log_head.c.id == literal_column("1")).scalar_subquery()


@compiles(CurrentCommit)
def _counter(element: CurrentCommit, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(HEAD_SEQ, **kw))


#: This transaction's commit token (see :class:`CurrentCommit`).
CURRENT_SEQ = CurrentCommit()


def logged_after(token: ColumnElement[int], at: int) -> ColumnElement[bool]:
    """Whether the commit ``token`` is logged after instant ``at`` (false for a commit pruned from
    the log, which is before the horizon, and for this transaction's own, not logged yet)."""
    return exists().where(commit_log.c.seq == token, commit_log.c.committed_at > at)


def archive(conn: Connection, table: Table, condition: ColumnElement[bool]) -> None:
    """Copy the rows of ``table`` matching ``condition`` into its history, ending at this commit.

    Rows written by this same commit were never visible to anybody else and are skipped."""
    history = HISTORY[table.name]
    names = [c.name for c in table.columns]
    conn.execute(
        insert(history).from_select(
            [*names, "valid_to_seq"],
            select(*table.columns, CURRENT_SEQ).where(condition, table.c.valid_from_seq != CURRENT_SEQ),
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


def _versions_at(table: Table, at: int) -> Select[Any]:
    """History rows of ``table`` valid at instant ``at``, with the live table's column names."""
    history = HISTORY[table.name]
    return select(*[history.c[c.name] for c in table.columns]).where(
        ~logged_after(history.c.valid_from_seq, at), logged_after(history.c.valid_to_seq, at)
    )


def rows_at(table: Table, at: int | None) -> Select[Any]:
    """The rows of ``table`` as committed at instant ``at`` (None: now), in an order that is safe
    to insert chunk by chunk (rows without a base first)."""
    if at is None:
        query: Any = select(*table.columns)
        source: Any = table
    else:
        live = select(*table.columns).where(~logged_after(table.c.valid_from_seq, at))
        source = union_all(live, _versions_at(table, at)).subquery()
        query = select(*source.c)
    return _bases_first(query, table, source)


def history_at(table: Table, at: int | None) -> Select[Any]:
    """The history rows that had already ended at instant ``at`` (None: all of them)."""
    history = HISTORY[table.name]
    query = select(*history.columns)
    return query if at is None else query.where(~logged_after(history.c.valid_to_seq, at))


def rewind(conn: Connection, at: int, unlink: bool = False) -> dict[str, int]:
    """Make the live tables equal to their state at instant ``at``, as this commit (no other
    writer may run meanwhile).

    Per table, parents first: archive the rows changed after ``at``, bring back rows deleted
    since (insert) and restore rows updated since (update in place, so no foreign key ever points
    at a missing row); then, children first, delete rows created after ``at``. Returns the rows
    changed per table."""
    changed: dict[str, int] = {}
    after = {t.name: logged_after(t.c.valid_from_seq, at) for t in VERSIONED_TABLES}
    for table in VERSIONED_TABLES:
        archive(conn, table, after[table.name])
    for table in VERSIONED_TABLES:
        key = list(table.primary_key.columns)
        past = _versions_at(table, at).subquery()
        same_key = and_(*[table.c[c.name] == past.c[c.name] for c in key])
        values: dict[str, Any] = {c.name: past.c[c.name] for c in table.columns if c.name not in {k.name for k in key}}
        values["valid_from_seq"] = CURRENT_SEQ
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
    as new versions of the commit with token ``seq``. Trajectories go in without their parent (which may come in
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


__all__ = [
    "CURRENT_SEQ",
    "HEAD_SEQ",
    "CurrentCommit",
    "archive",
    "delete_all",
    "history_at",
    "link_lineage",
    "load_rows",
    "logged_after",
    "remove",
    "retire",
    "rewind",
    "rows_at",
]
