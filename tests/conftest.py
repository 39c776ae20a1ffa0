"""One suite over every backend: the ``db_url`` fixture yields a fresh, empty database per test.

SQLite: a file in the test's tmp dir (WAL, as users run it). PostgreSQL: a new database on the
server named by ``FLE_DB_TEST_POSTGRES_URL`` (default: the local server as ``postgres``), dropped
afterwards. MySQL/MariaDB: likewise on ``FLE_DB_TEST_MYSQL_URL`` (default: the local server as
``root``). Without a reachable server those cases skip with the reason, except under ``CI=true``,
where they fail: CI must never pass by skipping them.

The general suite runs on SQLite and PostgreSQL (``backend``); the conformance suite
(``test_conformance.py``), the migration tests and the MySQL tests run on all three.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pymysql
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url as parse_url

from fle_db import DatabaseClient
from fle_db.backends import readonly

ADMIN_URL = os.environ.get("FLE_DB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("FLE_DB_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/")
BACKENDS = ["sqlite", "postgres"]
ALL_BACKENDS = ["sqlite", "postgres", "mysql"]


def _unreachable(what: str, reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(f"SKIPPING {what} TESTS: {reason}")


def _admin() -> psycopg.Connection:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unreachable("POSTGRES", f"PostgreSQL not reachable at FLE_DB_TEST_POSTGRES_URL={ADMIN_URL!r}: {exc}")
        raise


def mysql_admin() -> pymysql.connections.Connection:  # type: ignore[type-arg]
    """A connection to the MySQL/MariaDB test server (no database selected), autocommit."""
    url = parse_url(MYSQL_ADMIN_URL)
    try:
        return pymysql.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            autocommit=True,
            connect_timeout=5,
        )
    except pymysql.err.OperationalError as exc:
        _unreachable("MYSQL", f"MySQL/MariaDB not reachable at FLE_DB_TEST_MYSQL_URL={MYSQL_ADMIN_URL!r}: {exc}")
        raise


def _mysql_url(name: str) -> str:
    return parse_url(MYSQL_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _url_with_db(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture
def make_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Factory: ``make_url(backend)`` returns the URL of a new empty database of that backend."""
    created: list[str] = []
    created_mysql: list[str] = []

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path_factory.mktemp('db') / 'fle.db'}"
        name = f"fle_test_{uuid.uuid4().hex[:16]}"
        if backend == "mysql":
            with mysql_admin() as conn, conn.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE `{name}`")
            created_mysql.append(name)
            return _mysql_url(name)
        with _admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return _url_with_db(name)

    yield make
    # Each database's SELECT-only login (migration 0007) is server-wide: dropped with it.
    if created:
        with _admin() as conn:
            for name in created:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(readonly.login_name(name))))
    if created_mysql:
        with mysql_admin() as conn, conn.cursor() as cursor:
            for name in created_mysql:
                cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cursor.execute(f"DROP USER IF EXISTS '{readonly.login_name(name)}'@'%'")


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
