"""``fle-db init``, ``migrate``, ``status``, ``config``: where the database is and its schema."""

from __future__ import annotations

from typing import Any

import click

from ..config import Settings
from ._common import Options, echo_json, iec_bytes, json_option, location, open_client, print_table


def _migrate(options: Options) -> tuple[Settings, list[str], dict[str, Any]]:
    """Create the database if needed, apply pending migrations; return settings, applied, status."""
    with open_client(options, writes=True, create=True, auto_migrate=False) as client:
        applied = client.migrate()
        return client.settings, applied, client.get_migration_status()


@click.command()
@json_option
@click.pass_obj
def init(options: Options) -> None:
    """Create the database (if needed) and bring its schema up to date; print where it is."""
    settings, applied, status = _migrate(options)
    where = location(settings)
    if options.json:
        echo_json({"backend": settings.backend, "location": where, "applied": applied, **status})
        return
    done = f"applied {', '.join(applied)}" if applied else "already up to date"
    click.echo(f"Initialised {settings.backend} database at {where}")
    click.echo(f"Schema version {status['current_version']} ({done})")


@click.command()
@json_option
@click.pass_obj
def migrate(options: Options) -> None:
    """Apply pending schema migrations; print the revisions applied."""
    _settings, applied, status = _migrate(options)
    if options.json:
        echo_json({"applied": applied, **status})
    elif applied:
        click.echo(f"Applied {len(applied)} migration(s): {', '.join(applied)}")
        click.echo(f"Schema version is now {status['current_version']}")
    else:
        click.echo(f"Nothing to apply: the schema is at the latest version, {status['current_version']}")


@click.command()
@json_option
@click.pass_obj
def status(options: Options) -> None:
    """Show the schema version: current, latest, pending migrations (read-only)."""
    settings = Settings.resolve(options.url)
    if not settings.database_exists():
        # Report on a database that does not exist yet without creating its file.
        from .. import migrations

        result: dict[str, Any] = {
            "current_version": None,
            "latest_version": migrations.latest_revision(),
            "pending": migrations.pending_revisions(None),
            "up_to_date": False,
        }
        exists = False
    else:
        with open_client(options, writes=False, auto_migrate=False) as client:
            result = client.get_migration_status()
        exists = True
    result = {"location": location(settings), "exists": exists, **result}
    if options.json:
        echo_json(result)
        return
    print_table(
        "fle-db schema",
        [
            ("database", result["location"] + ("" if exists else " (does not exist yet)")),
            ("current version", result["current_version"] or "none (not initialised)"),
            ("latest version", result["latest_version"]),
            ("pending", ", ".join(result["pending"]) or "none"),
            ("up to date", "yes" if result["up_to_date"] else "no: run `fle-db migrate`"),
        ],
    )


@click.command()
@json_option
@click.pass_obj
def config(options: Options) -> None:
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
        "retention": settings.retention.text if settings.retention is not None else None,
        "source": "--url" if options.url is not None else "environment / defaults",
    }
    if options.json:
        echo_json(shown)
        return
    shown["max_payload_bytes"] = iec_bytes(settings.max_payload_bytes)
    print_table("fle-db settings", [(key, str(value)) for key, value in shown.items() if value is not None])
