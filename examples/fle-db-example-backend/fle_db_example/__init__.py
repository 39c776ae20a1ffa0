"""A minimal out-of-tree fle-db backend.

``ExampleBackend`` stores trajectories in an SQLite file, like the built-in ``sqlite`` backend,
but is its own backend: it is registered under the name ``example`` (see ``pyproject.toml``),
selected by ``FLE_DB_TYPE=example`` or an ``example:///path.db`` URL, reads its file from its own
environment variable ``EXAMPLE_DB_FILE``, and adds a health check of its own. A backend for
another database would subclass :class:`fle_db.backends.sql.SQLBackend` (a SQLAlchemy dialect)
or :class:`fle_db.backends.base.Backend` (anything else) the same way, and prove itself with the
conformance suite (``tests/test_conformance.py``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import URL

from fle_db.backends.sqlite import SQLiteBackend
from fle_db.config import ConnectionOptions

DEFAULT_FILE = ".fle/example.db"


class ExampleBackend(SQLiteBackend):
    """SQLite under the name ``example``, configured by ``EXAMPLE_DB_FILE``."""

    name = "example"

    @classmethod
    def url_from_options(cls, options: ConnectionOptions) -> URL:
        """Selected by name (``FLE_DB_TYPE=example``): the file ``EXAMPLE_DB_FILE`` names
        (``sqlite_db_file=`` as an argument), by default ``.fle/example.db``."""
        path = options.get("sqlite_db_file", "EXAMPLE_DB_FILE") or DEFAULT_FILE
        return cls.normalize_url(URL.create("example", database=str(path)))

    def _backend_checks(self) -> dict[str, dict[str, Any]]:
        return {**super()._backend_checks(), "example": {"status": "ok", "detail": "served by fle-db-example-backend"}}


__all__ = ["ExampleBackend"]
