"""``fle-db backup ...`` and ``fle-db restore-to``: backups and point-in-time recovery."""

from __future__ import annotations

import signal
import time

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..errors import ValidationError
from ._common import Options, console, echo_json, iec_bytes, json_option, location, open_client, print_table, report


@click.group()
def backup() -> None:
    """Backups: create, list, verify, restore, prune, and an automated schedule.

    Backups go to FLE_DB_BACKUP_DIR (default .fle/backups): a SQLite file and a JSON manifest each,
    whatever the backend, so a PostgreSQL backup restores into SQLite and back.
    """


@backup.command("create")
@json_option
@click.pass_obj
def backup_create(options: Options) -> None:
    """Back up the whole database now (consistent while writers write); prints the backup's id."""
    with open_client(options, writes=False) as client, Console(stderr=True).status("backing up..."):
        backup_id = client.create_backup()
        entry = next(b for b in client.list_backups() if b["id"] == backup_id)
    if options.json:
        echo_json(entry)
        return
    rows = [("path", entry["path"]), ("size", iec_bytes(entry["size"]))]
    rows += [("rows", ", ".join(f"{table} {n:,}" for table, n in entry["rows"].items()))]
    rows += [("commit", f"{entry['commit']['seq']} at {entry['commit']['committed_at']}")]
    print_table(f"backup {backup_id}", rows)


@backup.command("list")
@json_option
@click.pass_obj
def backup_list(options: Options) -> None:
    """List the backups (oldest first) and the point-in-time recovery window."""
    with open_client(options, writes=False) as client:
        backups, window = client.list_backups(), client.recovery_window()
    if options.json:
        echo_json({"backups": backups, "recovery_window": window})
        return
    table = Table(title=Text(f"backups in {client.settings.backup_dir}"), title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)  # copied into `backup verify/restore ID`: never wrapped
    for column in ("taken at", "size", "from", "schema", "verified"):
        table.add_column(column, overflow="fold")
    for entry in backups:
        table.add_row(
            Text(entry["id"]),
            Text(entry["timestamp"][:19].replace("T", " ")),
            Text(iec_bytes(entry["size"])),
            Text(entry["backend"]),
            Text(str(entry["schema_version"]).split("_", 1)[0]),
            Text("yes" if entry["verified"] else "no"),
        )
    console().print(table)
    click.echo(_window_text(window))


def _window_text(window: dict[str, str]) -> str:
    return f"point-in-time recovery window:\n  from {window['from']}\n  to   {window['to']}"


@backup.command("verify")
@click.argument("backup_id")
@json_option
@click.pass_obj
def backup_verify(options: Options, backup_id: str) -> None:
    """Re-check a backup fully (SHA-256, integrity_check, validation of a copy); exit 1 if damaged."""
    with open_client(options, writes=False) as client:
        result = client.verify_backup(backup_id)
    report(options, f"backup {backup_id} verified", result)


@backup.command("restore")
@click.argument("backup_id")
@click.option("--target", metavar="URL|PATH", help="Restore into this new SQLite path or empty database instead.")
@click.option("--yes", is_flag=True, help="Really replace the live data (a safety backup is taken first).")
@json_option
@click.pass_obj
def backup_restore(options: Options, backup_id: str, target: str | None, yes: bool) -> None:
    """Restore a backup, after checking it, into the live database (needs --yes) or into --target."""
    if target is None and not yes:
        raise ValidationError(
            "restoring in place replaces the live data: pass --yes (or --target to restore elsewhere)"
        )
    with open_client(options, writes=True) as client, Console(stderr=True).status("restoring..."):
        result = client.restore_backup(backup_id, target=target)
    report(options, f"restored backup {backup_id}", result)


@backup.command("prune")
@click.option("--keep", type=click.IntRange(min=1), help="Keep the N newest backups.")
@click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), help="Delete backups older than N days.")
@json_option
@click.pass_obj
def backup_prune(options: Options, keep: int | None, older_than_days: float | None) -> None:
    """Delete old backups (the newest is always kept)."""
    with open_client(options, writes=False) as client:
        deleted = client.prune_backups(keep, older_than_days * 86400 if older_than_days is not None else None)
    report(options, "fle-db backup prune", {"deleted": deleted})


@backup.command("schedule")
@click.option("--every", "interval", required=True, metavar="DURATION", help="Interval: seconds, or 90s, 15m, 6h, 1d.")
@click.option("--keep", type=click.IntRange(min=1), default=10, show_default=True, help="Keep the N newest backups.")
@click.option("--once", is_flag=True, help="Back up if one is due, prune, and exit (for cron or systemd timers).")
@click.pass_obj
def backup_schedule(options: Options, interval: str, keep: int, once: bool) -> None:
    """Automated backups in the foreground until stopped (Ctrl-C, SIGTERM). Stopping it mid-backup
    never leaves a broken backup listed. Equivalent in a program: DatabaseClient(backup_interval=...)."""
    seconds = _duration(interval)
    with open_client(options, writes=True, backup_interval=0) as client:  # prunes history
        scheduler = client.backup_scheduler(seconds, keep)
        made = scheduler.run_once()
        if once:
            click.echo(f"backup {made['id']}" if made else "no backup due")
            return
        click.echo(f"backing up {location(client.settings)} every {seconds:g} s into {client.settings.backup_dir}")
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


@click.command("restore-to")
@click.argument("timestamp", required=False)
@click.option("--target", metavar="URL|PATH", help="Write the past state into this new SQLite path or empty database.")
@click.option("--yes", is_flag=True, help="Really rewind the live database (a safety backup is taken first).")
@json_option
@click.pass_obj
def restore_to(options: Options, timestamp: str | None, target: str | None, yes: bool) -> None:
    """Point-in-time recovery: the database exactly as committed at TIMESTAMP (ISO 8601 with an
    offset, e.g. 2026-11-27T20:15:00Z, or epoch seconds), into --target or in place (--yes).

    Without TIMESTAMP, or without --target or --yes, it only prints the recovery window (the
    instants it can restore) and changes nothing."""
    if timestamp is None and (target is not None or yes):
        raise ValidationError("restore-to needs the TIMESTAMP to restore (run it without options to see the window)")
    with open_client(options, writes=timestamp is not None and (target is not None or yes)) as client:
        if timestamp is None or (target is None and not yes):
            window = client.recovery_window()
            if options.json:
                echo_json({"recovery_window": window})
                return
            click.echo(_window_text(window))
            click.echo(
                "To restore: fle-db restore-to TIMESTAMP --target PATH (a copy), or --yes to rewind the live "
                "database in place (undoable; a safety backup is taken first)."
            )
            return
        digits = timestamp.replace(".", "", 1)
        at: str | float = float(timestamp) if digits.isascii() and digits.isdigit() else timestamp  # not '²'
        result = client.restore_to(at, target=target)
    report(options, f"restored to {result['at']}", result)


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
