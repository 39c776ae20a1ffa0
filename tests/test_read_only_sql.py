"""``execute_query``: read-only SQL with no effect beyond reading, on SQLite, PostgreSQL and
MySQL/MariaDB (writes, server files and programs, advisory locks, session changes, time and row
limits, a missing or over-privileged login)."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import ADMIN_URL, ALL_BACKENDS, mysql_admin
from sqlalchemy.engine import make_url as parse_url

from fle_db import (
    ConfigurationError,
    ConflictError,
    DatabaseClient,
    FleDBError,
    QueryLimitError,
    QueryTimeoutError,
    Settings,
    ValidationError,
)
from fle_db.backends import readonly

UNICODE = "Grüße, Καλημέρα, 日本語, emoji 🚀"


def step(n: int, **fields: Any) -> dict[str, Any]:
    return {"trajectory_id": "t1", "step_number": n, "action": UNICODE, **fields}


@pytest.fixture(params=ALL_BACKENDS)
def any_url(request: pytest.FixtureRequest, make_url: Callable[[str], str]) -> str:
    return make_url(str(request.param))


@pytest.fixture
def db(any_url: str) -> Iterator[DatabaseClient]:
    # One pooled connection: a session a query could poison is the one the next write gets.
    client = DatabaseClient(any_url, max_connections=1, connection_timeout=5)
    yield client
    client.close()


def _admin_sql(db: DatabaseClient, statement: str) -> Any:
    """Run ``statement`` as the server's administrator in the client's database; first column."""
    name = db.settings.url.database
    if db.settings.backend == "mysql":
        with mysql_admin() as conn, conn.cursor() as cursor:
            cursor.execute(f"USE `{name}`")
            cursor.execute(statement)
            row = cursor.fetchone()
            return row[0] if row else None
    base, _, _ = ADMIN_URL.rpartition("/")
    with psycopg.connect(f"{base}/{name}", autocommit=True) as conn:
        row = conn.execute(statement).fetchone()
        return row[0] if row else None


def test_execute_query_binds_percent_s_placeholders_on_every_backend(db: DatabaseClient) -> None:
    db.save_step(step(0))
    rows = db.execute_query("SELECT step_number FROM steps WHERE trajectory_id = %s AND step_number >= %s", ["t1", 0])
    assert rows == [{"step_number": 0}]
    assert db.execute_query("SELECT 'a%%b' AS s WHERE 1 = %s", (1,)) == [{"s": "a%b"}]
    assert db.execute_query("SELECT 'a%b' AS s") == [{"s": "a%b"}]  # no parameters: % is literal
    assert db.get_performance_metrics()["operations"]["execute_query"]["count"] == 3


@pytest.mark.parametrize(
    "params",
    ["t1", b"t1", {"x": 1}, 5, [object()], ["a\x00b"], [2**70], [b"bytes"]],
    ids=["bare-string", "bytes", "mapping", "int", "object", "nul", "huge-int", "bytes-value"],
)
def test_execute_query_refuses_hostile_parameters_with_a_validation_error(db: DatabaseClient, params: Any) -> None:
    with pytest.raises(ValidationError):
        db.execute_query("SELECT %s AS x", params)


@pytest.mark.parametrize("query", [None, 42, "", "   ", "SELECT 1\x00"])
def test_execute_query_refuses_a_query_that_is_not_sql_text(db: DatabaseClient, query: Any) -> None:
    with pytest.raises(ValidationError):
        db.execute_query(query)


def test_writes_are_refused_and_change_nothing(db: DatabaseClient) -> None:
    db.save_step(step(0))
    for attack in (
        "DELETE FROM steps",
        "UPDATE steps SET step_number = 9",
        "INSERT INTO fle_versions (version, created_at, valid_from_seq) VALUES (99, 0, 0)",
        "DROP TABLE fle_versions",
        "CREATE TABLE evil (x int)",
        "SELECT 1; DELETE FROM steps",
    ):
        with pytest.raises(ValidationError):
            db.execute_query(attack)
    assert [s["step_number"] for s in db.load_steps("t1")] == [0]


def _server_file() -> str:
    return f"/tmp/fle_ro_{uuid.uuid4().hex}"


def test_postgres_server_files_and_programs_are_out_of_reach(make_url: Callable[[str], str]) -> None:
    with DatabaseClient(make_url("postgres")) as db:
        target = _server_file()
        oid = _admin_sql(db, "SELECT lo_from_bytea(0, 'secret')")
        for attack in (
            f"COPY (SELECT 1) TO PROGRAM 'touch {target}'",
            f"COPY (SELECT 1) TO '{target}'",
            f"SELECT lo_export({oid}, '{target}')",
            "SELECT pg_read_file('/etc/hostname') AS f",
            "SELECT pg_ls_dir('/') AS f",
        ):
            with pytest.raises(ValidationError):
                db.execute_query(attack)
            assert not os.path.exists(target), attack


def test_mysql_server_files_are_out_of_reach(make_url: Callable[[str], str]) -> None:
    with DatabaseClient(make_url("mysql")) as db:
        target = _server_file()
        with pytest.raises(ValidationError):
            db.execute_query(f"SELECT 1 INTO OUTFILE '{target}'")
        assert not os.path.exists(target)
        assert db.execute_query("SELECT LOAD_FILE('/etc/hostname') AS f") == [{"f": None}]


def test_advisory_locks_taken_by_a_query_are_not_held_afterwards(make_url: Callable[[str], str]) -> None:
    key = int(uuid.uuid4().int % 2**62)
    with DatabaseClient(make_url("postgres")) as db:
        db.execute_query("SELECT pg_advisory_lock(%s) IS NULL AS locked", (key,))
        assert _admin_sql(db, f"SELECT pg_try_advisory_lock({key})") is True
    name = f"fle_ro_test_{key}"
    with DatabaseClient(make_url("mysql")) as db:
        assert db.execute_query("SELECT GET_LOCK(%s, 0) AS locked", (name,)) == [{"locked": 1}]
        assert _admin_sql(db, f"SELECT IS_FREE_LOCK('{name}')") == 1


SESSION_CHANGES = {
    "sqlite": ["PRAGMA query_only = 0", "PRAGMA foreign_keys = 0", "ATTACH DATABASE ':memory:' AS x"],
    "postgres": [
        "SET search_path = pg_catalog",
        "SELECT set_config('search_path', 'pg_catalog', false) AS s",
        "SET client_encoding = 'LATIN1'",
        "SET default_transaction_read_only = off",
    ],
    "mysql": ["SET autocommit = 1", "SET NAMES latin1", "SET SESSION sql_mode = ''", "SET autocommit = 1"],
}


def test_session_changes_do_not_poison_later_writes(db: DatabaseClient) -> None:
    for change in SESSION_CHANGES[db.settings.backend]:
        with contextlib.suppress(FleDBError):  # refused, or applied to a session that then ends
            db.execute_query(change)
    db.save_step(step(2))
    with pytest.raises(ConflictError):  # a failing batch still stores nothing of itself
        db.batch_save_steps([step(0), step(1), step(2, action="different"), step(3)])
    assert [s["step_number"] for s in db.load_steps("t1")] == [2]
    assert db.load_steps("t1")[0]["action"] == UNICODE  # text round-trips, no mojibake
    assert db.execute_query("SELECT 1 AS one") == [{"one": 1}]


ENDLESS_CTE = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT max(n) AS n FROM r"
# MariaDB ends a recursion after max_recursive_iterations (1000): a join of four makes it 10^12 rows.
ENDLESS_MYSQL = (
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) AS n FROM r a, r b, r c, r d"
)
SLEEP = {"postgres": "SELECT pg_sleep(30) IS NULL AS slept", "mysql": "SELECT SLEEP(30) AS slept"}


def test_a_query_running_past_query_timeout_is_stopped(any_url: str) -> None:
    with DatabaseClient(any_url, query_timeout=1) as db:
        backend = db.settings.backend
        endless = ENDLESS_MYSQL if backend == "mysql" else ENDLESS_CTE
        queries = [endless, *([SLEEP[backend]] if backend in SLEEP else [])]
        for query in queries:
            started = time.monotonic()
            with pytest.raises(QueryTimeoutError):
                db.execute_query(query)
            assert time.monotonic() - started < 10, query
        assert db.execute_query("SELECT 1 AS one") == [{"one": 1}]


def test_a_result_over_query_max_rows_is_refused_not_truncated(any_url: str) -> None:
    counted = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < %s) SELECT n FROM r"
    with DatabaseClient(any_url, query_max_rows=5) as db:
        assert [row["n"] for row in db.execute_query(counted, (5,))] == [1, 2, 3, 4, 5]
        with pytest.raises(QueryLimitError, match="query_max_rows=5"):
            db.execute_query(counted, (6,))


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_refused_read_only_login_is_a_configuration_error_naming_the_grants(
    server: str, make_url: Callable[[str], str]
) -> None:
    url = make_url(server)
    wrong = parse_url(url).set(username="fle_ro_nobody", password="wrong")
    with DatabaseClient(url, read_only_url=wrong.render_as_string(hide_password=False)) as db:
        with pytest.raises(ConfigurationError, match="GRANT SELECT") as raised:
            db.execute_query("SELECT 1 AS one")
        assert "wrong" not in str(raised.value)
    with DatabaseClient(url) as db:  # the derived login of migration 0007 works
        assert db.execute_query("SELECT 1 AS one") == [{"one": 1}]


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_read_only_login_with_more_than_select_is_refused(server: str, make_url: Callable[[str], str]) -> None:
    url = make_url(server)
    with DatabaseClient(url, read_only_url=url) as db:  # the administrator as the "read-only" login
        with pytest.raises(ConfigurationError, match="may do more than read"):
            db.execute_query("SELECT 1 AS one")


def test_the_derived_login_is_per_database_and_needs_the_owner_password() -> None:
    assert readonly.login_name("a") != readonly.login_name("b")
    assert readonly.login_name("a") == readonly.login_name("a")
    assert len(readonly.login_name("x" * 64)) <= 32  # MySQL's limit on user names
    assert readonly.login_password("pw", "a") != readonly.login_password("other", "a")


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_migrating_user_who_may_not_create_logins_skips_the_login_and_gets_the_grants_named(
    server: str, make_url: Callable[[str], str]
) -> None:
    url = parse_url(make_url(server))
    owner = f"fle_owner_{uuid.uuid4().hex[:8]}"
    database = url.database
    if server == "postgres":
        base, _, _ = ADMIN_URL.rpartition("/")
        with psycopg.connect(f"{base}/{database}", autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {owner} LOGIN")  # no CREATEROLE
            conn.execute(f'ALTER DATABASE "{database}" OWNER TO {owner}')
            conn.execute(f"ALTER SCHEMA public OWNER TO {owner}")
    else:
        with mysql_admin() as conn, conn.cursor() as cursor:
            cursor.execute(f"CREATE USER '{owner}'@'%'")
            cursor.execute(f"GRANT ALL ON `{database}`.* TO '{owner}'@'%'")  # no CREATE USER
    try:
        with DatabaseClient(url.set(username=owner).render_as_string(hide_password=False)) as db:
            assert db.get_migration_status()["up_to_date"]
            with pytest.raises(ConfigurationError, match="GRANT SELECT") as raised:
                db.execute_query("SELECT 1 AS one")
            assert readonly.login_name(database or "") in str(raised.value)
    finally:
        if server == "postgres":
            with psycopg.connect(f"{base}/{database}", autocommit=True) as conn:
                conn.execute(f'ALTER DATABASE "{database}" OWNER TO postgres')
                conn.execute(f"REASSIGN OWNED BY {owner} TO postgres")
                conn.execute(f"DROP OWNED BY {owner}")
                conn.execute(f"DROP ROLE {owner}")
        else:
            with mysql_admin() as conn, conn.cursor() as cursor:
                cursor.execute(f"DROP USER '{owner}'@'%'")


def test_read_only_url_must_match_the_backend_and_is_not_carried_to_another_database() -> None:
    with pytest.raises(ConfigurationError, match="read_only_url"):
        Settings.resolve("postgresql://u@h/db", read_only_url="mysql://u@h/db")
    with pytest.raises(ConfigurationError, match="SKILLS_DB_READONLY_URL"):
        Settings.resolve("postgresql://u@h/db", environ={"SKILLS_DB_READONLY_URL": "sqlite:///x.db"})
    settings = Settings.resolve("postgresql://u@h/db", environ={"SKILLS_DB_READONLY_URL": "postgresql://ro:pw@h/db"})
    assert settings.read_only_url is not None and settings.read_only_url.username == "ro"
    assert "pw" not in repr(settings)
    assert settings.with_url("postgresql://u@h/other").read_only_url is None
    for bad in ({"query_timeout": 0}, {"query_timeout": -1}, {"query_max_rows": 0}, {"query_max_rows": 1.5}):
        with pytest.raises(ConfigurationError):
            Settings.resolve("sqlite://", **bad)
