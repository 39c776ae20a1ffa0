"""One suite over every backend: the ``db_url`` fixture yields a fresh, empty database per test.

SQLite: a file in the test's tmp dir (WAL, as users run it). PostgreSQL: a new database on the
server named by ``FLE_DB_TEST_POSTGRES_URL`` (default: the local server as ``postgres``), dropped
afterwards. Without a reachable server the PostgreSQL cases skip with the reason, except under
``CI=true``, where they fail: CI must never pass by skipping them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from fle_db import DatabaseClient

ADMIN_URL = os.environ.get("FLE_DB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"PostgreSQL not reachable at FLE_DB_TEST_POSTGRES_URL={ADMIN_URL!r}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(f"SKIPPING POSTGRES TESTS: {reason}")


def _url_with_db(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def make_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory: ``make_url(backend)`` returns the URL of a new empty database of that backend."""
    created: list[str] = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / 'fle.db'}"
        name = f"fle_test_{uuid.uuid4().hex[:16]}"
        with _admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return _url_with_db(name)

    yield make
    if created:
        with _admin() as conn:
            for name in created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, make_url) -> str:  # type: ignore[no-untyped-def]
    return make_url(backend)  # type: ignore[no-any-return]


@pytest.fixture
def db(db_url: str) -> Iterator[DatabaseClient]:
    client = DatabaseClient(db_url)
    yield client
    client.close()
