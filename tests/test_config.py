"""Settings: arguments over environment over defaults; clear errors naming the variable; no leaks."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fle_db import ConfigurationError, DatabaseClient, Settings

PG_ENV = {
    "FLE_DB_TYPE": "postgres",
    "SKILLS_DB_HOST": "db.example",
    "SKILLS_DB_PORT": "6543",
    "SKILLS_DB_NAME": "fle_database",
    "SKILLS_DB_USER": "fle_user",
    "SKILLS_DB_PASSWORD": "fle123-secret",
}


def test_defaults_to_sqlite_at_dot_fle_data_db() -> None:
    settings = Settings.resolve(environ={})
    assert settings.backend == "sqlite"
    assert settings.url.database == ".fle/data.db"
    assert (settings.max_connections, settings.connection_timeout) == (10, 30.0)


def test_no_argument_client_creates_the_default_file_and_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLE_DB_TYPE", raising=False)
    monkeypatch.delenv("SQLITE_DB_FILE", raising=False)
    with DatabaseClient() as db:
        db.save_trajectory({"id": "t"})
    path = tmp_path / ".fle" / "data.db"
    assert path.is_file()
    assert path.stat().st_mode & 0o077 == 0, "database file must be owner-only"


def test_sqlite_db_file_from_environment(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "nested" / "dir" / "runs.db"
    monkeypatch.setenv("FLE_DB_TYPE", "sqlite")
    monkeypatch.setenv("SQLITE_DB_FILE", str(target))
    with DatabaseClient() as db:
        assert db.settings.url.database == str(target)
    assert target.is_file()


def test_postgres_from_the_five_skills_db_variables() -> None:
    settings = Settings.resolve(environ=PG_ENV)
    assert settings.backend == "postgres"
    url = settings.url
    assert (url.host, url.port, url.database, url.username, url.password) == (
        "db.example",
        6543,
        "fle_database",
        "fle_user",
        "fle123-secret",
    )


def test_arguments_override_the_environment() -> None:
    settings = Settings.resolve(db_type="postgres", host="other", port=5432, environ=PG_ENV)
    assert (settings.url.host, settings.url.port, settings.url.database) == ("other", 5432, "fle_database")
    sqlite = Settings.resolve(db_type="sqlite", sqlite_db_file="x.db", environ=PG_ENV)
    assert sqlite.backend == "sqlite" and sqlite.url.database == "x.db"


@pytest.mark.parametrize(
    ("url", "backend"),
    [
        ("sqlite:///path.db", "sqlite"),
        ("sqlite://", "sqlite"),
        ("postgresql://user:pw@host:5432/db", "postgres"),
        ("postgres://user:pw@host/db", "postgres"),
        ("postgresql+psycopg://user@host/db", "postgres"),
    ],
)
def test_url_form_selects_the_backend_and_ignores_the_environment(url: str, backend: str) -> None:
    assert Settings.resolve(url, environ=PG_ENV | {"FLE_DB_TYPE": "nonsense"}).backend == backend


@pytest.mark.parametrize("missing", ["SKILLS_DB_HOST", "SKILLS_DB_NAME", "SKILLS_DB_USER"])
def test_missing_postgres_variable_is_named_and_never_falls_back_to_sqlite(missing: str) -> None:
    env = {k: v for k, v in PG_ENV.items() if k != missing}
    with pytest.raises(ConfigurationError, match=missing):
        Settings.resolve(environ=env)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"FLE_DB_TYPE": "oracle"}, "FLE_DB_TYPE"),
        (PG_ENV | {"SKILLS_DB_PORT": "fivefour"}, "SKILLS_DB_PORT"),
        (PG_ENV | {"SKILLS_DB_PORT": "70000"}, "SKILLS_DB_PORT"),
    ],
)
def test_invalid_setting_raises_configuration_error_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        Settings.resolve(environ=env)


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_connections", 0), ("connection_timeout", -1), ("max_connections", True), ("durability", "off")],
)
def test_invalid_pool_options_raise_configuration_error(option: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=option):
        Settings.resolve("sqlite://", **{option: value})


def test_unsupported_url_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="oracle"):
        Settings.resolve("oracle://u:pw@h/db")


def test_password_never_appears_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    secret = "fle123-secret"
    settings = Settings.resolve(environ=PG_ENV)
    assert secret not in repr(settings)
    assert secret not in settings.safe_url()
    caplog.set_level(logging.DEBUG)
    url = f"postgresql://fle_user:{secret}@127.0.0.1:1/fle_database"
    with pytest.raises(Exception) as info:
        DatabaseClient(url, connection_timeout=2)
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert secret not in caplog.text


def test_unreachable_postgres_raises_backend_unavailable_quickly() -> None:
    from fle_db import BackendUnavailableError

    with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1"):
        DatabaseClient("postgresql://nobody@127.0.0.1:1/none", connection_timeout=2)
