"""The backend registry: built-ins, entry points (group ``fle_db.backends``), selection by
``FLE_DB_TYPE`` or URL scheme, and clear errors that list what is installed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fle_db import ConfigurationError, DatabaseClient, Settings
from fle_db.backends import registry
from fle_db.backends.sqlite import SQLiteBackend


class PluginBackend(SQLiteBackend):
    """A third-party backend for these tests: SQLite under another name."""

    name = "plugin"


class Misnamed(SQLiteBackend):
    name = "something_else"


def _register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: dict[str, str]) -> None:
    """Install a distribution that only declares entry points (what pip install writes)."""
    dist = tmp_path / "site" / "fle_db_plugin_test-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fle-db-plugin-test\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (dist / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{lines}")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_the_three_builtin_backends_are_always_available() -> None:
    assert {"sqlite", "postgres", "mysql"} <= registry.available_backends().keys()


@pytest.mark.parametrize(
    ("raw", "name"),
    [("sqlite", "sqlite"), ("SQLite3", "sqlite"), ("postgresql", "postgres"), ("psql", "postgres"),
     ("mysql", "mysql"), ("mariadb", "mysql"), ("mysql+pymysql", "mysql")],
)  # fmt: skip
def test_names_aliases_and_driver_suffixes_select_a_backend(raw: str, name: str) -> None:
    assert registry.canonical_name(raw) == name


def test_an_unknown_name_lists_the_installed_backends() -> None:
    with pytest.raises(ConfigurationError, match=r"FLE_DB_TYPE='oracle'.*installed: mysql, postgres, sqlite"):
        Settings.resolve(environ={"FLE_DB_TYPE": "oracle"})
    with pytest.raises(ConfigurationError, match=r"URL scheme 'oracle'.*installed: mysql, postgres, sqlite"):
        Settings.resolve("oracle://u:secret@h/db")


def test_an_entry_point_backend_is_selected_by_name_and_by_url_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _register(tmp_path, monkeypatch, {"plugin": f"{__name__}:PluginBackend"})
    assert registry.available_backends()["plugin"] == f"{__name__}:PluginBackend"
    with pytest.raises(ConfigurationError, match=r"installed: .*plugin"):
        Settings.resolve(environ={"FLE_DB_TYPE": "nope"})
    by_url = Settings.resolve(f"plugin:///{tmp_path / 'a.db'}")
    assert by_url.backend == "plugin"
    with DatabaseClient(f"plugin:///{tmp_path / 'a.db'}") as db:
        assert type(db._backend) is PluginBackend  # type: ignore[attr-defined]
        db.save_step({"trajectory_id": "t", "step_number": 0})
    monkeypatch.setenv("FLE_DB_TYPE", "plugin")
    monkeypatch.setenv("SQLITE_DB_FILE", str(tmp_path / "a.db"))
    with DatabaseClient() as db:
        assert db.settings.backend == "plugin"
        assert db.load_latest_checkpoint("t") is not None


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("fle_db_no_such_module:Backend", "cannot be imported.*fle_db_no_such_module"),
        (f"{__name__}:NoSuchClass", "does not exist"),
        ("pathlib:Path", "not a fle_db Backend subclass"),
        (f"{__name__}:Misnamed", "calls itself 'something_else'"),
    ],
)
def test_a_broken_entry_point_is_a_configuration_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, message: str
) -> None:
    _register(tmp_path, monkeypatch, {"broken": target})
    with pytest.raises(ConfigurationError, match=message):
        Settings.resolve(environ={"FLE_DB_TYPE": "broken"})


def test_an_entry_point_cannot_take_a_builtin_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry._load.cache_clear()  # the built-in was loaded (and checked) by earlier tests
    _register(tmp_path, monkeypatch, {"sqlite": f"{__name__}:PluginBackend"})
    try:
        with pytest.raises(ConfigurationError, match=r"built in.*rename that entry point"):
            Settings.resolve("sqlite://")
    finally:
        registry._load.cache_clear()
