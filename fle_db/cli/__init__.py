"""``fle-db``: the command line (``fle-db --help``).

The database is the one ``--url`` names, else the one the environment configures
(``FLE_DB_TYPE``, ``SQLITE_DB_FILE``, ``SKILLS_DB_*``), else SQLite at ``.fle/data.db``.
``--json`` switches a command's output to one JSON document on stdout.

Exit codes: 0 success; 2 a configuration or validation error (bad setting, bad argument); 1 any
other fle-db error (database unreachable, trajectory not found...). fle-db errors print one line
``Error: <message>`` on stderr, never a traceback, and never a password. Warnings are labelled
``warning:`` on stderr, each once per process.

The commands live in modules by group: :mod:`.setup` (init, migrate, status, config),
:mod:`.browse` (list, show, ui), :mod:`.live` (tail), :mod:`.maintenance` (stats, health, cleanup, thin,
optimize, validate, metrics), :mod:`.retention` (retention show, apply), :mod:`.transfer` (demo, export,
import, copy), :mod:`.backups` (backup, restore-to).
"""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from ..errors import ConfigurationError, FleDBError, ValidationError
from . import backups, browse, live, maintenance, retention, setup, transfer
from ._common import EXIT_ERROR, EXIT_USAGE, Options, show_warnings


class _Group(click.Group):
    """The CLI's one error boundary: fle-db errors and usage errors (of this group and of every
    command below it) become one line on stderr and an exit code, never a traceback."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:  # a bad global option: there is no context to exit through
            _echo_error(exc)
            raise SystemExit(EXIT_USAGE) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _echo_error(exc)
            code = EXIT_USAGE
        except FleDBError as exc:
            _echo_error(exc)
            code = EXIT_USAGE if isinstance(exc, (ConfigurationError, ValidationError)) else EXIT_ERROR
        ctx.exit(code)

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in the order a newcomer meets them, not alphabetically."""
        return list(self.commands)


def _echo_error(exc: Exception) -> None:
    """``exc`` as one line ``Error: ...`` on stderr; a usage error names the command's ``--help``."""
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "fle-db"
        message = f"{exc.format_message()} (see `{where} --help`)"
    else:
        message = str(exc) or type(exc).__name__
    click.echo(f"Error: {' '.join(message.split())}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    metavar="URL",
    default=None,
    help="Database URL (sqlite:///path, postgresql://user:password@host:port/db, mysql://...); overrides the "
    "environment.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output where it applies.")
@click.version_option(__version__, prog_name="fle-db")
@click.pass_context
def main(ctx: click.Context, url: str | None, as_json: bool) -> None:
    """fle-db: the checkpoint database for AI-agent trajectories (SQLite, PostgreSQL, MySQL or a custom backend).

    Without --url the database comes from FLE_DB_TYPE, SQLITE_DB_FILE and SKILLS_DB_* (see
    `fle-db config`), by default SQLite at .fle/data.db.
    """
    show_warnings()
    ctx.obj = Options(url=url, json=as_json)


for _command in (
    transfer.demo,
    browse.list_command,
    browse.show,
    live.tail,
    browse.ui,
    setup.init,
    setup.migrate,
    setup.status,
    setup.config,
    maintenance.stats,
    maintenance.health,
    maintenance.cleanup,
    maintenance.thin,
    retention.retention,
    maintenance.optimize,
    maintenance.validate,
    maintenance.metrics,
    transfer.export_command,
    transfer.import_command,
    transfer.copy,
    backups.backup,
    backups.restore_to,
):
    main.add_command(_command)

__all__ = ["EXIT_ERROR", "EXIT_USAGE", "main"]
