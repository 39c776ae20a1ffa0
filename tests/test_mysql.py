"""What only the MySQL/MariaDB backend has to prove: its settings, its error mapping (lock
waits, oversized statements, unreachable servers), password hygiene and its query plans. The
contract itself is proven by the conformance suite (``test_conformance.py::TestMySQL``)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import pytest
from conftest import mysql_admin

from fle_db import (
    BackendUnavailableError,
    ConfigurationError,
    ConnectionTimeoutError,
    DatabaseClient,
    PayloadTooLargeError,
    Settings,
)

MYSQL_ENV = {
    "FLE_DB_TYPE": "mysql",
    "SKILLS_DB_HOST": "db.example",
    "SKILLS_DB_NAME": "fle_database",
    "SKILLS_DB_USER": "fle_user",
    "SKILLS_DB_PASSWORD": "fle123-secret",
}


@pytest.fixture
def db(make_url: Callable[[str], str]) -> Iterator[DatabaseClient]:
    client = DatabaseClient(make_url("mysql"), connection_timeout=2)
    yield client
    client.close()


def test_mysql_reads_the_skills_db_variables_with_port_3306() -> None:
    settings = Settings.resolve(environ=MYSQL_ENV)
    url = settings.url
    assert settings.backend == "mysql"
    assert (url.drivername, url.host, url.port, url.database, url.username, url.password) == (
        "mysql+pymysql",
        "db.example",
        3306,
        "fle_database",
        "fle_user",
        "fle123-secret",
    )
    assert Settings.resolve(environ=MYSQL_ENV | {"SKILLS_DB_PORT": "3307"}).url.port == 3307


@pytest.mark.parametrize("url", ["mysql://u@h/db", "mariadb://u@h/db", "mysql+pymysql://u@h/db"])
def test_mysql_and_mariadb_urls_select_the_mysql_backend(url: str) -> None:
    settings = Settings.resolve(url, environ={"FLE_DB_TYPE": "postgres"})
    assert settings.backend == "mysql" and settings.url.drivername == "mysql+pymysql"


@pytest.mark.parametrize(
    ("source", "named"),
    [
        ({"url": "mysql://u@h"}, "names no database"),
        ({"url": "mysql://u@h/db?sslmode=sometimes"}, "sslmode"),
        ({"environ": {k: v for k, v in MYSQL_ENV.items() if k != "SKILLS_DB_HOST"}}, "SKILLS_DB_HOST"),
    ],
)
def test_invalid_mysql_settings_are_configuration_errors_naming_them(source: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.resolve(**source)  # type: ignore[arg-type]


def test_mysql_password_never_appears_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "fle123-secret"
    assert secret not in repr(Settings.resolve(environ=MYSQL_ENV))
    caplog.set_level(logging.DEBUG)
    for url in (
        f"mysql://fle_user:{secret}@127.0.0.1:1/fle_database",  # nobody listens
        f"mysql://no_such_user:{secret}@127.0.0.1:3306/test",  # the server refuses the login
    ):
        with pytest.raises(BackendUnavailableError) as info:
            DatabaseClient(url, connection_timeout=2)
        assert secret not in str(info.value) and secret not in repr(info.value)
    assert secret not in caplog.text


def test_a_row_locked_longer_than_connection_timeout_is_a_connection_timeout(db: DatabaseClient) -> None:
    db.save_trajectory({"id": "t", "task": "iron"})
    name = db.settings.url.database
    with mysql_admin() as other, other.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute(f"SELECT id FROM `{name}`.trajectories WHERE id = 't' FOR UPDATE")
        with pytest.raises(ConnectionTimeoutError, match="locked by another transaction"):
            db.save_trajectory({"id": "t", "task": "copper"})
        cursor.execute("ROLLBACK")
    assert db.load_trajectory("t")["task"] == "iron"


def test_a_body_over_max_allowed_packet_is_refused_before_sending(db: DatabaseClient) -> None:
    backend = db._backend  # type: ignore[attr-defined]
    backend._max_packet = 512 * 1024  # as if the server allowed 512 KB
    noise = os.urandom(300 * 1024).hex()  # ~330 KB compressed: 660 KB as hex
    with pytest.raises(PayloadTooLargeError, match="max_allowed_packet"):
        db.save_step({"trajectory_id": "t", "step_number": 0, "blob": noise})
    with pytest.raises(PayloadTooLargeError, match="max_allowed_packet"):
        db.save_metadata("t", "k", noise)
    with pytest.raises(PayloadTooLargeError, match="max_allowed_packet"):
        db.save_trajectory({"id": "t", "blob": noise})
    assert db.get_statistics()["trajectories"] == 0
    db.save_step({"trajectory_id": "t", "step_number": 0, "blob": "small"})


def test_resume_reads_the_newest_step_through_the_primary_key(db: DatabaseClient) -> None:
    for t in range(20):
        db.batch_save_steps({"trajectory_id": f"t{t}", "step_number": n, "action": "a"} for n in range(150))
    db.optimize()  # ANALYZE TABLE: the plan below is the one a filled database gets
    backend = db._backend  # type: ignore[attr-defined]
    query = backend._select_latest
    with backend.engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN " + query.sql, query.params({"tid": "t7"})).mappings().all()
    steps = [row for row in rows if row["table"] in ("steps", "<derived2>")]
    inner = next(row for row in rows if row["table"] == "steps")
    assert inner["key"] == "PRIMARY" and inner["type"] in ("ref", "range"), rows
    assert all("filesort" not in (row["Extra"] or "") for row in steps), rows
    assert db.load_latest_checkpoint("t7")["step"]["step_number"] == 149  # type: ignore[index]


def test_health_reports_the_servers_connections_durability_and_packet_size(db: DatabaseClient) -> None:
    checks = db.health_check()["checks"]
    assert {"connections", "read_only", "durability", "max_allowed_packet"} <= checks.keys()
    assert checks["read_only"]["status"] == "ok"
    assert [a["action"] for a in db.optimize(vacuum=True)["actions"]] == ["optimize"]
