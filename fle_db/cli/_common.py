"""What every ``fle-db`` command shares: options, opening the database, the output style.

One output style: tables readable at 80 columns (ids never wrapped), sizes in IEC units
(:func:`fle_db.units.iec_bytes`), ``--json`` for one JSON document on stdout, warnings labelled
``warning:`` on stderr, each once per process.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from ..backends.sqlite import SQLITE_LIBRARY_LOGGER
from ..client import DatabaseClient
from ..config import Settings
from ..errors import NotFoundError
from ..units import iec_bytes

#: Exit code of a configuration or validation error (click uses 2 for usage errors as well).
EXIT_USAGE = 2
#: Exit code of any other fle-db error.
EXIT_ERROR = 1


@dataclass(frozen=True)
class Options:
    """The group's options, passed to every command."""

    url: str | None
    json: bool


def json_option(command: Any) -> Any:
    """``--json`` on a command too, so ``fle-db status --json`` works like ``fle-db --json status``:
    either sets ``json`` of the options the command receives."""

    def switch_on(ctx: click.Context, _param: click.Parameter, given: bool) -> None:
        if given:
            ctx.obj = replace(ctx.obj, json=True)

    return click.option(
        "--json", is_flag=True, expose_value=False, callback=switch_on, help="Print JSON (same as the global --json)."
    )(command)


def open_client(options: Options, *, writes: bool, create: bool = False, **settings: Any) -> DatabaseClient:
    """The database the options name, with ``settings`` for the client; only commands that
    ``create`` one (demo, init, migrate, import) may open a database that does not exist yet.
    Commands that do not write (``writes=False``) do not show the SQLite-library warning, which
    is about concurrent writers and so only matters to commands that write.

    Raises:
        NotFoundError: there is no database there (and ``create`` is false).
    """
    _SqliteLibraryFilter.quiet = not writes
    return DatabaseClient(options.url, **settings) if create else existing_client(options.url, **settings)


def existing_client(url: str | None, **settings: Any) -> DatabaseClient:
    """A client of a database that exists already: commands that inspect or maintain one never
    create an empty database where none is (a mistyped path would otherwise look empty).

    Raises:
        NotFoundError: there is no database there.
    """
    resolved = Settings.resolve(url)
    if not resolved.database_exists():
        raise NotFoundError(
            f"there is no database at {resolved.location}: it does not exist (`fle-db init` creates one)"
        )
    return DatabaseClient(url, **settings)


class _SqliteLibraryFilter(logging.Filter):
    quiet = False

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.quiet and record.name == SQLITE_LIBRARY_LOGGER)


class _Stderr(logging.Handler):
    """Labelled messages on the current stderr (``click.echo`` resolves it at each call, so
    click's test runner sees them too), each distinct message once per process."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(_SqliteLibraryFilter())
        self._shown: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        message = f"{record.levelname.lower()}: {record.getMessage()}"
        if message not in self._shown:
            self._shown.add(message)
            click.echo(message, err=True)


_handler: _Stderr | None = None


def show_warnings() -> None:
    """Route fle-db's warnings and errors to stderr, labelled (``warning: ...``). Idempotent."""
    global _handler
    if _handler is None:
        _handler = _Stderr()
        logging.getLogger("fle_db").addHandler(_handler)


@contextmanager
def progress(what: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
    """A progress bar on stderr (a spinner with a count when ``total`` is unknown)."""
    columns = [SpinnerColumn(), TextColumn(what), BarColumn(), TextColumn("{task.description}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=total)
        yield lambda done, text: bar.update(task, completed=done, description=text)


def report(options: Options, title: str, result: dict[str, Any]) -> None:
    """``result`` as JSON, or as a two-column table (byte counts of ``size``-like keys in IEC units)."""
    if options.json:
        echo_json(result)
    else:
        print_table(title, [(key, _value(key, value)) for key, value in result.items()])


def _value(key: str, value: Any) -> str:
    sized = key in ("size", "bytes", "size_before", "size_after", "bytes_freed") or key.endswith("_bytes")
    return iec_bytes(value) if sized and isinstance(value, int) and not isinstance(value, bool) else text(value)


def location(settings: Settings) -> str:
    """Where the database is: a file's absolute path, or the URL without its password."""
    return settings.location


def print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a two-column table; values are plain text (never parsed as rich markup), wrapped at
    word boundaries so an id stays whole on one line."""
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    console().print(table)


def console() -> Console:
    """A console on stdout (80 columns when it is not a terminal, unless ``COLUMNS`` says)."""
    return Console()


def text(value: Any) -> str:
    """A value for a table cell: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def echo_json(value: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(value, indent=2))


__all__ = [
    "EXIT_ERROR",
    "EXIT_USAGE",
    "Options",
    "console",
    "echo_json",
    "existing_client",
    "iec_bytes",
    "json_option",
    "location",
    "open_client",
    "print_table",
    "progress",
    "report",
    "show_warnings",
    "text",
]
