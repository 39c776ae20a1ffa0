"""``fle-db``: the command line (``fle-db --help``).

The database is the one ``--url`` names, else the one the environment configures
(``FLE_DB_TYPE``, ``SQLITE_DB_FILE``, ``SKILLS_DB_*``), else SQLite at ``.fle/data.db``.
``--json`` switches the output of ``init``, ``migrate``, ``status``, ``config``, ``show`` and
``demo`` to one JSON document on stdout.

Exit codes: 0 success; 2 a configuration or validation error (bad setting, bad argument); 1 any
other fle-db error (database unreachable, trajectory not found...). fle-db errors print one line
``Error: <message>`` on stderr, never a traceback, and never a password.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ._version import __version__
from .client import DatabaseClient
from .config import Settings, database_url
from .errors import ConfigurationError, FleDBError, NotFoundError, ValidationError

#: Exit code of a configuration or validation error (click uses 2 for usage errors as well).
EXIT_USAGE = 2
#: Exit code of any other fle-db error.
EXIT_ERROR = 1


@dataclass(frozen=True)
class _Options:
    url: str | None
    json: bool


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


def _echo_error(exc: Exception) -> None:
    """``exc`` as one line ``Error: ...`` on stderr; a usage error names the command's ``--help``."""
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "fle-db"
        message = f"{exc.format_message()} (see `{where} --help`)"
    else:
        message = str(exc) or type(exc).__name__
    click.echo(f"Error: {' '.join(message.split())}", err=True)


def _json_option(command: Any) -> Any:
    """``--json`` on a command too, so ``fle-db status --json`` works like ``fle-db --json status``:
    either sets ``json`` of the options the command receives."""

    def switch_on(ctx: click.Context, _param: click.Parameter, given: bool) -> None:
        if given:
            ctx.obj = replace(ctx.obj, json=True)

    return click.option(
        "--json", is_flag=True, expose_value=False, callback=switch_on, help="Print JSON (same as the global --json)."
    )(command)


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
    ctx.obj = _Options(url=url, json=as_json)


@main.command()
@click.option("--trajectories", type=click.IntRange(1, 10_000), default=5, show_default=True, help="Trajectories.")
@click.option("--steps", type=click.IntRange(2, 1_000_000), default=40, show_default=True, help="Steps each.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated data.")
@_json_option
@click.pass_obj
def demo(options: _Options, trajectories: int, steps: int, seed: int) -> None:
    """Simulate FLE agent runs: checkpoint every step, crash one run and resume it.

    Writes new trajectories (ids demo-<time>-<random>-<i>) to the database, creating and migrating
    it if needed, then prints a summary: steps/s, resume latency, database size.
    """
    from .demo import run_demo  # imported here: `fle-db --help` stays fast

    console = Console(stderr=True) if options.json else Console()
    with DatabaseClient(options.url) as client:
        summary = run_demo(client, trajectories=trajectories, steps=steps, console=console, seed=seed)
    if options.json:
        _echo_json(summary)


def _migrate(options: _Options) -> tuple[Settings, list[str], dict[str, Any]]:
    """Create the database if needed, apply pending migrations; return settings, applied, status."""
    with DatabaseClient(options.url, auto_migrate=False) as client:
        applied = client.migrate()
        return client.settings, applied, client.get_migration_status()


@main.command()
@_json_option
@click.pass_obj
def init(options: _Options) -> None:
    """Create the database (if needed) and bring its schema up to date; print where it is."""
    settings, applied, status = _migrate(options)
    location = _location(settings)
    if options.json:
        _echo_json({"backend": settings.backend, "location": location, "applied": applied, **status})
        return
    done = f"applied {', '.join(applied)}" if applied else "already up to date"
    click.echo(f"Initialised {settings.backend} database at {location}")
    click.echo(f"Schema version {status['current_version']} ({done})")


@main.command()
@_json_option
@click.pass_obj
def migrate(options: _Options) -> None:
    """Apply pending schema migrations; print the revisions applied."""
    _settings, applied, status = _migrate(options)
    if options.json:
        _echo_json({"applied": applied, **status})
    elif applied:
        click.echo(f"Applied {len(applied)} migration(s): {', '.join(applied)}")
        click.echo(f"Schema version is now {status['current_version']}")
    else:
        click.echo(f"Nothing to apply: the schema is at the latest version, {status['current_version']}")


@main.command()
@_json_option
@click.pass_obj
def status(options: _Options) -> None:
    """Show the schema version: current, latest, pending migrations (read-only)."""
    settings = Settings.resolve(options.url)
    if not settings.database_exists():
        # Report on a database that does not exist yet without creating its file.
        from . import migrations

        result: dict[str, Any] = {
            "current_version": None,
            "latest_version": migrations.latest_revision(),
            "pending": migrations.pending_revisions(None),
            "up_to_date": False,
        }
        exists = False
    else:
        with DatabaseClient(options.url, auto_migrate=False) as client:
            result = client.get_migration_status()
        exists = True
    result = {"location": _location(settings), "exists": exists, **result}
    if options.json:
        _echo_json(result)
        return
    _print_table(
        "fle-db schema",
        [
            ("database", result["location"] + ("" if exists else " (does not exist yet)")),
            ("current version", result["current_version"] or "none (not initialised)"),
            ("latest version", result["latest_version"]),
            ("pending", ", ".join(result["pending"]) or "none"),
            ("up to date", "yes" if result["up_to_date"] else "no: run `fle-db migrate`"),
        ],
    )


@main.command()
@_json_option
@click.pass_obj
def config(options: _Options) -> None:
    """Show the resolved settings (the password is never shown). Does not connect."""
    settings = Settings.resolve(options.url)
    shown: dict[str, Any] = {
        "backend": settings.backend,
        "url": settings.safe_url(),
        "location": settings.location,
        "max_connections": settings.max_connections,
        "connection_timeout": settings.connection_timeout,
        "auto_migrate": settings.auto_migrate,
        "max_payload_bytes": settings.max_payload_bytes,
        "durability": settings.durability,
        "source": "--url" if options.url is not None else "environment / defaults",
    }
    if options.json:
        _echo_json(shown)
        return
    _print_table("fle-db settings", [(key, str(value)) for key, value in shown.items() if value is not None])


@main.command()
@_json_option
@click.pass_obj
def stats(options: _Options) -> None:
    """Show what the database holds: counts, sizes per table, game-state compression, step times."""
    with _existing(options.url) as client:
        result = client.get_statistics()
    if options.json:
        _echo_json(result)
        return
    state_bytes = result["game_state_bytes"]
    ratio = state_bytes["ratio"]
    rows = [
        (key, f"{result[key]:,}" + ("" if result["exact_counts"] else " (estimate)"))
        for key in ("trajectories", "steps", "game_states", "agent_outputs", "environment_feedbacks", "blobs")
    ]
    rows.append(("size", _mib(result["size"])))
    rows += [(f"  {table}", _mib(size)) for table, size in sorted(result["tables"].items(), key=lambda kv: -kv[1])]
    rows.append(
        (
            "game states",
            f"{_mib(state_bytes['stored'])} stored for {_mib(state_bytes['raw'])} of JSON"
            + (f" ({ratio:.1%})" if ratio is not None else ""),
        )
    )
    rows += [("oldest step", result["oldest_step_at"] or "-"), ("newest step", result["newest_step_at"] or "-")]
    _print_table(f"fle-db statistics ({result['backend']})", rows)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.2f} MiB"


@main.command()
@_json_option
@click.pass_obj
def health(options: _Options) -> None:
    """Check the database: connectivity, schema, a write probe (leaves no trace), disk and WAL
    (SQLite), connection limits and replication (PostgreSQL). Exit code 1 when failing."""
    with _existing(options.url, auto_migrate=False) as client:
        result = client.health_check()
    if options.json:
        _echo_json(result)
    else:
        rows = [("status", result["status"])]
        rows += [(name, f"{check['status']}: {check['detail']}") for name, check in result["checks"].items()]
        _print_table(f"fle-db health ({result['backend']})", rows)
    if result["status"] == "failing":
        raise SystemExit(EXIT_ERROR)


@main.command()
@click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), help="No activity for this many days.")
@click.option("--before", help="No activity since this ISO 8601 time (with offset).")
@click.option("--id", "trajectory_ids", multiple=True, help="Only these trajectory ids (repeatable).")
@click.option("--task", help="Only trajectories of this task.")
@click.option("--agent", "agent_type", help="Only trajectories of this agent type.")
@click.option("--keep-best", "keep_best_per_task", type=click.IntRange(min=0), help="Keep the N best per task.")
@click.option("--yes", is_flag=True, help="Really delete; without it this is a dry run.")
@_json_option
@click.pass_obj
def cleanup(
    options: _Options,
    older_than_days: float | None,
    before: str | None,
    trajectory_ids: tuple[str, ...],
    task: str | None,
    agent_type: str | None,
    keep_best_per_task: int | None,
    yes: bool,
) -> None:
    """Delete trajectories matching every option given, lineage-aware (a trajectory a kept fork
    descends from is kept). A dry run unless --yes: it reports what would go and the bytes freed."""
    with _existing(options.url) as client:
        report = client.cleanup(
            older_than_days * 86400 if older_than_days is not None else None,
            before=before,
            trajectory_ids=trajectory_ids or None,
            task=task,
            agent_type=agent_type,
            keep_best_per_task=keep_best_per_task,
            dry_run=not yes,
        )
    if options.json:
        _echo_json(report)
        return
    verb = "would delete" if report["dry_run"] else "deleted"
    rows = [(verb, f"{len(report['trajectories'])} trajectories: {', '.join(report['trajectories'][:20]) or '-'}")]
    rows += [(f"  {table}", f"{n:,}") for table, n in report["rows"].items() if n]
    rows.append(("bytes freed", _mib(report["bytes_freed"])))
    if report["kept_for_lineage"]:
        rows.append(("kept for lineage", ", ".join(report["kept_for_lineage"][:20])))
    _print_table("fle-db cleanup" + (" (dry run: pass --yes to delete)" if report["dry_run"] else ""), rows)


@main.command()
@click.option("--vacuum", is_flag=True, help="Also return free space to the filesystem (rewrites the database).")
@click.option("--reindex", is_flag=True, help="Also rebuild the indexes.")
@_json_option
@click.pass_obj
def optimize(options: _Options, vacuum: bool, reindex: bool) -> None:
    """Run the backend's maintenance (ANALYZE; SQLite WAL checkpoint; optionally VACUUM, REINDEX)."""
    with _existing(options.url) as client:
        report = client.optimize(vacuum=vacuum, reindex=reindex)
    if options.json:
        _echo_json(report)
        return
    rows = [(action["action"], f"{action['ms']:,.1f} ms") for action in report["actions"]]
    rows.append(("size", f"{_mib(report['size_before'])} -> {_mib(report['size_after'])}"))
    _print_table("fle-db optimize", rows)


@main.command()
@_json_option
@click.pass_obj
def validate(options: _Options) -> None:
    """Check everything (structure, checksums, states, records, lineage, numbering). Exit code 1
    when a problem is an error."""
    console = Console(stderr=True)
    with _existing(options.url, auto_migrate=False) as client, console.status("validating...") as status:
        report = client.validate(progress=lambda stage, done: status.update(f"validating {stage}: {done:,}"))
    if options.json:
        _echo_json(report)
    else:
        rows = [("result", "ok" if report["ok"] else "PROBLEMS FOUND")]
        rows += [(f"checked {name}", f"{n:,}") for name, n in report["checked"].items()]
        rows += [(f"{p['severity']}: {p['kind']}", f"{p['where']}: {p['detail']}") for p in report["problems"][:50]]
        _print_table("fle-db validate", rows)
    if not report["ok"]:
        raise SystemExit(EXIT_ERROR)


@main.command()
@_json_option
@click.pass_obj
def metrics(options: _Options) -> None:
    """Probe the database (a health check and the statistics) and show the latencies measured
    and the connection pool: a quick look at how fast it answers now."""
    with _existing(options.url, auto_migrate=False) as client:
        client.health_check()
        client.get_statistics()
        result = client.get_performance_metrics()
    if options.json:
        _echo_json(result)
        return
    rows = [
        (name, f"{op['count']} calls, p50 {op['p50_ms']:.2f} ms, p99 {op['p99_ms']:.2f} ms")
        for name, op in result["operations"].items()
    ]
    rows.append(
        ("pool", f"{result['pool']['in_use']} in use, {result['pool']['idle']} idle, max {result['pool']['max']}")
    )
    _print_table("fle-db metrics", rows)


@main.command("export")
@click.argument("path")  # checked by export_data: a new file or a regular one, never a folder or device
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "chat", "parquet"]),
    default="jsonl",
    show_default=True,
    help="jsonl: importable (.zst path: compressed); chat: fine-tuning conversations; parquet: analysis.",
)
@click.option("--trajectory", "trajectory_ids", multiple=True, help="Only these trajectory ids (repeatable).")
@click.option("--task", help="Only trajectories of this task.")
@click.option("--agent", "agent_type", help="Only trajectories of this agent type.")
@click.option("--since", help="Only trajectories first saved at or after this ISO 8601 time (with offset).")
@click.option("--until", help="Only trajectories first saved before this ISO 8601 time (with offset).")
@_json_option
@click.pass_obj
def export_command(
    options: _Options,
    path: str,
    fmt: str,
    trajectory_ids: tuple[str, ...],
    task: str | None,
    agent_type: str | None,
    since: str | None,
    until: str | None,
) -> None:
    """Export trajectories (steps, outputs, feedbacks, states, metadata) matching every option
    to PATH, streaming; the file appears complete or not at all."""
    with _existing(options.url) as client, _progress("exporting", None) as advance:
        report = client.export_data(
            path,
            fmt,
            trajectory_ids=trajectory_ids or None,
            task=task,
            agent_type=agent_type,
            since=since,
            until=until,
            progress=lambda trajectories, _bytes: advance(trajectories, f"{trajectories:,} trajectories"),
        )
    if options.json:
        _echo_json(report)
        return
    rows = [(key, f"{value:,}" if isinstance(value, int) else str(value)) for key, value in report.items()]
    _print_table("fle-db export", rows)


@main.command("import")
@click.argument("path")  # checked by import_data: a regular file
@_json_option
@click.pass_obj
def import_command(options: _Options, path: str) -> None:
    """Import a jsonl export (plain or .zst). Idempotent: what is already stored is counted as
    present; data that differs from the stored data is refused (exit code 1), never overwritten."""
    size = os.path.getsize(path) if os.path.isfile(path) else None
    with DatabaseClient(options.url) as client, _progress("importing", size) as advance:
        report = client.import_data(
            path, progress=lambda trajectories, done: advance(done, f"{trajectories:,} trajectories")
        )
    if options.json:
        _echo_json(report)
        return
    rows = [
        (table, f"{n['created']:,} created, {n.get('present', n.get('unchanged', 0)):,} already present")
        for table, n in report.items()
        if isinstance(n, dict)
    ]
    rows.append(("updated trajectories", f"{report['trajectories']['updated']:,}"))
    rows.append(("seconds", str(report["seconds"])))
    _print_table("fle-db import", rows)


@contextmanager
def _progress(what: str, total: int | None) -> Iterator[Callable[[int, str], None]]:
    """A progress bar on stderr (a spinner with a count when ``total`` is unknown)."""
    columns = [SpinnerColumn(), TextColumn(what), BarColumn(), TextColumn("{task.description}")]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=total)
        yield lambda done, text: bar.update(task, completed=done, description=text)


@main.command()
@click.argument("trajectory_id")
@_json_option
@click.pass_obj
def show(options: _Options, trajectory_id: str) -> None:
    """Show a trajectory: its record, metadata, number of steps and latest step number."""
    settings = Settings.resolve(options.url)
    location = _location(settings)
    if not settings.database_exists():
        raise NotFoundError(f"trajectory {trajectory_id!r} does not exist: there is no database at {location}")
    with DatabaseClient(options.url, auto_migrate=False) as client:
        if client.get_migration_status()["current_version"] is None:
            raise NotFoundError(
                f"trajectory {trajectory_id!r} does not exist: the database at {location} is not initialised "
                "(run `fle-db init`)"
            )
        trajectory = client.load_trajectory(trajectory_id)
        metadata = client.load_metadata(trajectory_id)
        numbers = [step["step_number"] for step in client.load_steps(trajectory_id)]
    result = {
        "trajectory": trajectory,
        "metadata": metadata,
        "steps": len(numbers),
        "latest_step_number": numbers[-1] if numbers else None,
        "contiguous": numbers == list(range(len(numbers))),
    }
    if options.json:
        _echo_json(result)
        return
    rows = [(key, _text(value)) for key, value in trajectory.items()]
    rows += [(f"metadata.{key}", _text(value)) for key, value in metadata.items()]
    rows.append(("steps", str(len(numbers)) + ("" if result["contiguous"] else " (not contiguous from 0)")))
    rows.append(("latest step", "none" if not numbers else str(numbers[-1])))
    _print_table(f"trajectory {trajectory_id}", rows)


@main.group()
def backup() -> None:
    """Backups: create, list, verify, restore, prune, and an automated schedule.

    Backups go to FLE_DB_BACKUP_DIR (default .fle/backups): a SQLite file and a JSON manifest each,
    whatever the backend, so a PostgreSQL backup restores into SQLite and back.
    """


@backup.command("create")
@_json_option
@click.pass_obj
def backup_create(options: _Options) -> None:
    """Back up the whole database now (consistent while writers write); prints the backup's id."""
    with _existing(options.url) as client, Console(stderr=True).status("backing up..."):
        backup_id = client.create_backup()
        entry = next(b for b in client.list_backups() if b["id"] == backup_id)
    if options.json:
        _echo_json(entry)
        return
    _print_table(f"backup {backup_id}", [(key, _text(entry[key])) for key in ("path", "size", "rows", "commit")])


@backup.command("list")
@_json_option
@click.pass_obj
def backup_list(options: _Options) -> None:
    """List the backups (oldest first) and the point-in-time recovery window."""
    with _existing(options.url) as client:
        backups, window = client.list_backups(), client.recovery_window()
    if options.json:
        _echo_json({"backups": backups, "recovery_window": window})
        return
    table = Table(title=Text(f"backups in {client.settings.backup_dir}"), title_justify="left")
    for column in ("id", "timestamp", "size", "backend", "schema", "verified"):
        table.add_column(column, overflow="fold")
    for entry in backups:
        table.add_row(
            *(Text(str(entry[key])) for key in ("id", "timestamp")),
            Text(_mib(entry["size"])),
            *(Text(str(entry[key])) for key in ("backend", "schema_version", "verified")),
        )
    Console().print(table)
    click.echo(f"point-in-time recovery reaches from {window['from']} to {window['to']}")


@backup.command("verify")
@click.argument("backup_id")
@_json_option
@click.pass_obj
def backup_verify(options: _Options, backup_id: str) -> None:
    """Re-check a backup fully (SHA-256, integrity_check, validation of a copy); exit 1 if damaged."""
    with _existing(options.url) as client:
        report = client.verify_backup(backup_id)
    _report(options, f"backup {backup_id} verified", report)


@backup.command("restore")
@click.argument("backup_id")
@click.option("--target", metavar="URL|PATH", help="Restore into this new SQLite path or empty database instead.")
@click.option("--yes", is_flag=True, help="Really replace the live data (a safety backup is taken first).")
@_json_option
@click.pass_obj
def backup_restore(options: _Options, backup_id: str, target: str | None, yes: bool) -> None:
    """Restore a backup, after checking it, into the live database (needs --yes) or into --target."""
    if target is None and not yes:
        raise ValidationError(
            "restoring in place replaces the live data: pass --yes (or --target to restore elsewhere)"
        )
    with _existing(options.url) as client, Console(stderr=True).status("restoring..."):
        report = client.restore_backup(backup_id, target=target)
    _report(options, f"restored backup {backup_id}", report)


@backup.command("prune")
@click.option("--keep", type=click.IntRange(min=1), help="Keep the N newest backups.")
@click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), help="Delete backups older than N days.")
@_json_option
@click.pass_obj
def backup_prune(options: _Options, keep: int | None, older_than_days: float | None) -> None:
    """Delete old backups (the newest is always kept)."""
    with _existing(options.url) as client:
        deleted = client.prune_backups(keep, older_than_days * 86400 if older_than_days is not None else None)
    _report(options, "fle-db backup prune", {"deleted": deleted})


@backup.command("schedule")
@click.option("--every", "interval", required=True, metavar="DURATION", help="Interval: seconds, or 90s, 15m, 6h, 1d.")
@click.option("--keep", type=click.IntRange(min=1), default=10, show_default=True, help="Keep the N newest backups.")
@click.option("--once", is_flag=True, help="Back up if one is due, prune, and exit (for cron or systemd timers).")
@click.pass_obj
def backup_schedule(options: _Options, interval: str, keep: int, once: bool) -> None:
    """Automated backups in the foreground until stopped (Ctrl-C, SIGTERM). Stopping it mid-backup
    never leaves a broken backup listed. Equivalent in a program: DatabaseClient(backup_interval=...)."""
    seconds = _duration(interval)
    with _existing(options.url, backup_interval=0) as client:
        scheduler = client.backup_scheduler(seconds, keep)
        made = scheduler.run_once()
        if once:
            click.echo(f"backup {made['id']}" if made else "no backup due")
            return
        click.echo(f"backing up {_location(client.settings)} every {seconds:g} s into {client.settings.backup_dir}")
        scheduler.start()
        # SIGTERM (systemd, docker stop, kill) stops like Ctrl-C: the handler raises in the main
        # thread, which then waits for a backup in progress to finish before exiting 0.
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            while True:
                time.sleep(3600)
        except (KeyboardInterrupt, _Stopped):
            scheduler.stop()
            click.echo("stopped")
        finally:
            signal.signal(signal.SIGTERM, previous)


class _Stopped(Exception):
    """SIGTERM arrived."""


def _raise_stop(_signum: int, _frame: object) -> None:
    raise _Stopped


@main.command("restore-to")
@click.argument("timestamp")
@click.option("--target", metavar="URL|PATH", help="Write the past state into this new SQLite path or empty database.")
@click.option("--yes", is_flag=True, help="Really rewind the live database (a safety backup is taken first).")
@_json_option
@click.pass_obj
def restore_to(options: _Options, timestamp: str, target: str | None, yes: bool) -> None:
    """Point-in-time recovery: the database exactly as committed at TIMESTAMP (ISO 8601 with an
    offset, e.g. 2026-11-27T20:15:00Z, or epoch seconds), into --target or in place (--yes)."""
    digits = timestamp.replace(".", "", 1)
    at: str | float = float(timestamp) if digits.isascii() and digits.isdigit() else timestamp  # not '²'
    with _existing(options.url) as client:
        if target is None and not yes:
            window = client.recovery_window()
            raise ValidationError(
                "restoring in place rewinds the live data (undoable; a safety backup is taken first): pass --yes, "
                f"or --target to restore elsewhere. Recovery window: {window['from']} to {window['to']}"
            )
        report = client.restore_to(at, target=target)
    _report(options, f"restored to {report['at']}", report)


@main.command()
@click.argument("source")
@click.argument("target")
@_json_option
@click.pass_obj
def copy(options: _Options, source: str, target: str) -> None:
    """Copy a whole database (history included) from SOURCE to TARGET, between any backends: URLs,
    or paths of SQLite files. TARGET must be new or empty. Shows a progress bar."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with _existing(database_url(source)) as client, Progress(*columns, console=Console(stderr=True)) as bar:
        tasks: dict[str, Any] = {}

        def progress(table: str, rows: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.advance(tasks[table], rows)

        report = client.copy_to(target, progress=progress)
    _report(options, "fle-db copy", report)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; not loopback needs a token.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the viewer in the default browser.")
@click.option("--token", envvar="FLE_DB_UI_TOKEN", default=None, help="Access token (default: random off loopback).")
@_json_option
@click.pass_obj
def ui(options: _Options, host: str, port: int, open_browser: bool, token: str | None) -> None:
    """Serve a local read-only web viewer: trajectories, rewards, steps, diffs, trees, status."""
    from .ui.serve import run  # imported here: the web stack loads only for this command

    run(options.url, host=host, port=port, open_browser=open_browser, token=token, as_json=options.json)


def _existing(url: str | None, **options: Any) -> DatabaseClient:
    """A client of a database that exists already: commands that inspect or maintain one never
    create an empty database where none is (a mistyped path would otherwise look empty).

    Raises:
        NotFoundError: there is no database there.
    """
    settings = Settings.resolve(url)
    if not settings.database_exists():
        raise NotFoundError(
            f"there is no database at {settings.location}: it does not exist (`fle-db init` creates one)"
        )
    return DatabaseClient(url, **options)


def _duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``15m``, ``6h`` or ``1d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise ValidationError(f"not a duration: {text!r} (use seconds, or 90s, 15m, 6h, 1d)") from None
    if not 0 < seconds < float("inf"):
        raise ValidationError(f"the interval must be positive, got {text!r}")
    return seconds


def _report(options: _Options, title: str, report: dict[str, Any]) -> None:
    if options.json:
        _echo_json(report)
    else:
        _print_table(title, [(key, _text(value)) for key, value in report.items()])


def _location(settings: Settings) -> str:
    """Where the database is: a file's absolute path, or the URL without its password."""
    return settings.location


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    """Print a two-column table; values are plain text (never parsed as rich markup)."""
    table = Table(title=Text(title), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    Console().print(table)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


__all__ = ["main"]
