"""No input makes fle-db misbehave: every public method of ``DatabaseClient`` and every CLI
command, found by introspection (so methods and commands added later are covered too), is fed
hostile values — wrong types, None, NUL, huge strings, Unicode digits, the ends of the datetime
range, paths containing ``?%#``, special files, folders — and may only succeed or raise a
``FleDBError``; a CLI command may only succeed or print one ``Error:`` line and exit with 1 or 2,
never a traceback.

Each method and each command gets a fresh, seeded database (a hostile ``cleanup`` or in-place
restore may only harm its own), on SQLite and PostgreSQL. The working directory is a temporary
folder, so relative paths land there.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from async_adapter import CLIENT_KINDS, client_factory
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fle_db import DatabaseClient, FleDBError
from fle_db.cli import main

#: Every public method, found by introspection.
METHODS = sorted(
    name for name, member in inspect.getmembers(DatabaseClient, inspect.isfunction) if not name.startswith("_")
)
_OMIT = object()
#: No example database (the working directory is temporary); slow examples are expected.
_EXPLORE = settings(
    deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
_CLOSED_URL = "postgresql://u:pw@127.0.0.1:1/nothing"  # refuses at once: nothing listens on port 1


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every leaf command of the CLI, by walking the click group."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(main))
#: Commands that would run until stopped, or for minutes with their defaults, get these first
#: (the hostile values drawn may still override them).
BOUNDED = {
    ("backup", "schedule"): ["--once"],
    ("demo",): ["--trajectories", "1", "--steps", "2"],
    ("tail",): ["--timeout", "0.2"],
}


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory: a temporary folder with a FIFO, a folder and an awkward name."""
    monkeypatch.chdir(tmp_path)
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder.db").mkdir()
    return tmp_path


def _texts(place: Path) -> list[str]:
    return [
        "",
        "\x00",
        "a\x00b",
        "²",
        "١٢",
        "12",
        "t1",
        "0",
        "-1",
        "1e400",
        "nan",
        "9223372036854775808",
        "..",
        "../data",
        "x" * 300,
        "x" * 100_000,
        "'; DROP TABLE steps; --",
        "\ud800",
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "2026-01-01T00:00:00",
        "a?b=1%41#c.db",
        str(place / "p?x=1%41#y.db"),
        str(place / "fifo"),
        str(place / "folder.db"),
        "/dev/null",
        "/dev/full",
        f"sqlite:///{place / 'other.db'}",
        _CLOSED_URL,
        "nosuch://x",
    ]


def _values(place: Path) -> st.SearchStrategy[Any]:
    fixed: list[Any] = [
        None,
        True,
        False,
        0,
        -1,
        2**63,
        -(2**70),
        1e300,
        float("nan"),
        float("inf"),
        datetime.min,
        datetime.max,
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
        timedelta.max,
        b"bytes",
        [],
        {},
        ["12"],
        [None],
        {"id": None},
        {"id": "t1", "step_number": "1"},
        {"trajectory_id": "t1", "step_number": 2**63},
        (1, 2),
        {1, 2},
        object(),
        Path("/dev/null"),
        place / "fifo",
        place / "folder.db",
        print,
        *_texts(place),
    ]
    return st.one_of(st.sampled_from(fixed), st.text(max_size=20), st.integers(), st.floats())


def _seeded(url: str, place: Path, kind: str = "sync") -> DatabaseClient:
    client = client_factory(kind)(url, backup_dir=place / "backups?x=1", connection_timeout=5, retry_deadline=0)
    client.save_step({"trajectory_id": "t1", "step_number": 0, "action": "a"}, game_state={"tick": 1})
    client.fork_trajectory("t1", 0, "12")
    client.create_backup()
    return client


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("name", METHODS)
def test_every_public_method_raises_only_fle_db_errors(name: str, kind: str, db_url: str, place: Path) -> None:
    """Through both clients (the asyncio one driven by tests/async_adapter.py)."""
    signature = inspect.signature(getattr(DatabaseClient, name))
    parameters = [
        p
        for p in list(signature.parameters.values())[1:]
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    hostile = _values(place)
    arguments = st.fixed_dictionaries(
        {
            p.name: hostile if p.default is inspect.Parameter.empty else st.one_of(st.just(_OMIT), hostile)
            for p in parameters
        }
    )
    client = _seeded(db_url, place, kind)

    @settings(_EXPLORE, max_examples=30)
    @given(arguments)
    def call(drawn: dict[str, Any]) -> None:
        kwargs = {key: value for key, value in drawn.items() if value is not _OMIT}
        try:
            getattr(client, name)(**kwargs)
        except FleDBError:
            pass

    try:
        call()
    finally:
        client.close()


def _option_values(place: Path) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(_texts(place)), st.text(max_size=12))


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_cli_command_fails_in_one_line(
    path: tuple[str, ...], db_url: str, place: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `fle-db ui` serves until Ctrl-C: here it opens the database and binds its port (so a bad
    # host or a port in use is still tried), then returns instead of serving.
    monkeypatch.setattr("fle_db.ui.serve._serve", lambda _app, listener: listener.close())
    command = COMMANDS[path]
    text = _option_values(place)
    pieces: list[st.SearchStrategy[list[str]]] = []
    for param in command.params:
        if isinstance(param, click.Argument):
            pieces.append(text.map(lambda value: [value]))
        elif isinstance(param, click.Option) and param.opts[0] not in ("--help", "-h"):
            flag = param.opts[-1]
            if param.is_flag:
                pieces.append(st.sampled_from([[], [flag]]))
            else:
                pieces.append(st.one_of(st.just([]), text.map(lambda value, f=flag: [f, value])))
    argv = st.tuples(*pieces).map(lambda parts: [word for part in parts for word in part])
    _seeded(db_url, place).close()
    runner = CliRunner()

    @settings(_EXPLORE, max_examples=12)
    @given(argv)
    def run(words: list[str]) -> None:
        args = ["--url", db_url, *path, *BOUNDED.get(path, []), *words]
        result = runner.invoke(main, args, env={"FLE_DB_BACKUP_DIR": str(place / "backups?x=1")})
        shown = f"fle-db {args!r:.500}: exit {result.exit_code}\n{result.output[-2000:]}"
        assert result.exception is None or isinstance(result.exception, SystemExit), shown
        assert result.exit_code in (0, 1, 2), shown
        assert "Traceback" not in result.output, shown
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        if result.exit_code != 0 and errors:
            assert len(errors) == 1 and errors[0].startswith("Error: "), shown

    run()


def test_the_constructor_raises_only_fle_db_errors(place: Path) -> None:
    """``DatabaseClient(url, **options)``: every option ``Settings.resolve`` takes, found by
    introspection, with hostile values (SQLite files land in the temporary working directory)."""
    from fle_db import Settings

    options = [name for name in inspect.signature(Settings.resolve).parameters if name not in ("url", "environ")]
    hostile = _values(place)

    @settings(_EXPLORE, max_examples=150)
    @given(st.one_of(st.just(_OMIT), hostile), st.dictionaries(st.sampled_from(options), hostile, max_size=2))
    def construct(url: Any, drawn: dict[str, Any]) -> None:
        try:
            client = DatabaseClient(None if url is _OMIT else url, **{"connection_timeout": 5, "environ": {}, **drawn})
        except FleDBError:
            return
        client.close()

    construct()
