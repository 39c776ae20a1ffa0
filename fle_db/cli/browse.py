"""``fle-db list`` and ``fle-db show``: browsing runs from the terminal."""

from __future__ import annotations

import click

from ..config import Settings
from ..errors import NotFoundError
from ._common import Options, echo_json, json_option, location, open_client, print_table, text


@click.command()
@click.argument("trajectory_id")
@json_option
@click.pass_obj
def show(options: Options, trajectory_id: str, as_json: bool) -> None:
    """Show a trajectory: its record, metadata, number of steps and latest step number."""
    settings = Settings.resolve(options.url)
    where = location(settings)
    if not settings.database_exists():
        raise NotFoundError(f"trajectory {trajectory_id!r} does not exist: there is no database at {where}")
    with open_client(options, read_only=True, auto_migrate=False) as client:
        if client.get_migration_status()["current_version"] is None:
            raise NotFoundError(
                f"trajectory {trajectory_id!r} does not exist: the database at {where} is not initialised "
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
    if as_json or options.json:
        echo_json(result)
        return
    rows = [(key, text(value)) for key, value in trajectory.items()]
    rows += [(f"metadata.{key}", text(value)) for key, value in metadata.items()]
    rows.append(("steps", str(len(numbers)) + ("" if result["contiguous"] else " (not contiguous from 0)")))
    rows.append(("latest step", "none" if not numbers else str(numbers[-1])))
    print_table(f"trajectory {trajectory_id}", rows)
