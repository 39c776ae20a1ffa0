"""``column IN (ids)`` for id lists of any length, as one bound parameter.

A plain ``IN`` binds one parameter per id, and engines cap parameters per statement (SQLite
32,766, PostgreSQL 65,535), so a caller's filter of 40,000 trajectory ids would fail. The list
travels instead as one value: a JSON array read by ``json_each`` on SQLite, an array compared
with ``= ANY`` on PostgreSQL; MySQL/MariaDB have no parameter cap below ``max_allowed_packet``
and keep the plain ``IN``. The statement text does not depend on the list's length, so it is
also compiled (and cached) once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.types import Boolean


class InIds(ColumnElement[bool]):
    """``column IN ids`` (``ids``: strings), compiled per dialect to one bound parameter."""

    type = Boolean()
    inherit_cache = False  # the ids are a value, not part of the statement's shape

    def __init__(self, column: ColumnElement[Any], ids: Sequence[str]) -> None:
        self.column = column
        self.ids = list(ids)


@compiles(InIds)
def _plain(element: InIds, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column.in_(element.ids), **kw))


@compiles(InIds, "sqlite")
def _json_each(element: InIds, compiler: Any, **kw: Any) -> str:
    listed = func.json_each(bindparam(None, orjson.dumps(element.ids).decode(), type_=String)).table_valued("value")
    return str(compiler.process(element.column.in_(select(listed.c.value)), **kw))


@compiles(InIds, "postgresql")
def _any_array(element: InIds, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column == any_(bindparam(None, element.ids, type_=ARRAY(String))), **kw))


def in_ids(column: ColumnElement[Any], ids: Sequence[str]) -> ColumnElement[bool]:
    """The condition ``column IN ids`` for any number of ids (one bound parameter)."""
    return InIds(column, ids)


__all__ = ["in_ids"]
