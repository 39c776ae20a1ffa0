"""``fle-db demo``, ``export``, ``import``, ``copy``: putting data in and taking it out."""

from __future__ import annotations

import os

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ..config import database_url
from ._common import (
    Options,
    echo_json,
    existing_client,
    iec_bytes,
    json_option,
    open_client,
    print_table,
    progress,
    report,
)


@click.command()
@click.option("--trajectories", type=click.IntRange(1, 10_000), default=5, show_default=True, help="Trajectories.")
@click.option("--steps", type=click.IntRange(2, 1_000_000), default=40, show_default=True, help="Steps each.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the generated data.")
@json_option
@click.pass_obj
def demo(options: Options, trajectories: int, steps: int, seed: int) -> None:
    """Simulate FLE agent runs: checkpoint every step, crash one run and resume it.

    Writes new trajectories (ids demo-<time>-<random>-<i>, dated now) to the database, creating
    and migrating it if needed (it says when it adds to an existing one), then prints a summary
    (steps/s, resume latency, database size) and what to try next.
    """
    from ..demo import run_demo  # imported here: `fle-db --help` stays fast

    console = Console(stderr=True) if options.json else Console()
    with open_client(options, writes=True, create=True) as client:
        summary = run_demo(client, trajectories=trajectories, steps=steps, console=console, seed=seed)
    if options.json:
        echo_json(summary)
        return
    url = "" if options.url is None else f"--url {options.url} "
    steps_shown = f"show {summary['interrupted_trajectory_id']} --step {summary['resumed_from_step']}"
    click.echo("\nNext:")
    for command, what in (
        (f"fle-db {url}list", "the runs, newest first"),
        (f"fle-db {url}{steps_shown}", "the step the crashed run resumed from: its code, output and reward"),
        (f"fle-db {url}ui", "browse the runs in a web browser"),
        ("Python quick start (README.md)", "save, resume and fork your own agent's runs"),
    ):
        click.echo(f"  {command}\n      {what}")


@click.command("export")
@click.argument("path")  # checked by export_data: a new file or a regular one, never a folder or device
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "chat", "sft", "preference", "adp", "parquet", "hf"]),
    default="jsonl",
    show_default=True,
    help="jsonl: importable (.zst path: compressed); chat: fine-tuning conversations; sft: chat with per-turn "
    "rewards and search values; preference: TRL pairs of sibling branches ranked by value; adp: Agent Data "
    "Protocol; parquet: analysis; hf: a Hugging Face dataset folder (PATH absent or empty).",
)
@click.option("--trajectory", "trajectory_ids", multiple=True, help="Only these trajectory ids (repeatable).")
@click.option("--task", help="Only trajectories of this task.")
@click.option("--agent", "agent_type", help="Only trajectories of this agent type.")
@click.option("--since", help="Only trajectories first saved at or after this ISO 8601 time (with offset).")
@click.option("--until", help="Only trajectories first saved before this ISO 8601 time (with offset).")
@click.option("--success/--failure", "success", default=None, help="Only trajectories that succeeded / failed.")
@click.option("--min-total-reward", type=float, help="Only trajectories whose total reward is at least this.")
@json_option
@click.pass_obj
def export_command(
    options: Options,
    path: str,
    fmt: str,
    trajectory_ids: tuple[str, ...],
    task: str | None,
    agent_type: str | None,
    since: str | None,
    until: str | None,
    success: bool | None,
    min_total_reward: float | None,
) -> None:
    """Export trajectories (steps, outputs, feedbacks, states, metadata) matching every option
    to PATH, streaming; the file (or the hf folder) appears complete or not at all."""
    with open_client(options, writes=False) as client, progress("exporting", None) as advance:
        result = client.export_data(
            path,
            fmt,
            trajectory_ids=trajectory_ids or None,
            task=task,
            agent_type=agent_type,
            since=since,
            until=until,
            success=success,
            min_total_reward=min_total_reward,
            progress=lambda trajectories, _bytes: advance(trajectories, f"{trajectories:,} trajectories"),
        )
    if options.json:
        echo_json(result)
        return
    rows = [
        (key, iec_bytes(value) if key == "bytes" else f"{value:,}" if isinstance(value, int) else str(value))
        for key, value in result.items()
    ]
    print_table("fle-db export", rows)


@click.command("import")
@click.argument("path")  # checked by import_data: a regular file
@json_option
@click.pass_obj
def import_command(options: Options, path: str) -> None:
    """Import a jsonl export (plain or .zst). Idempotent: what is already stored is counted as
    present; data that differs from the stored data is refused (exit code 1), never overwritten."""
    size = os.path.getsize(path) if os.path.isfile(path) else None
    with open_client(options, writes=True, create=True) as client, progress("importing", size) as advance:
        result = client.import_data(
            path, progress=lambda trajectories, done: advance(done, f"{trajectories:,} trajectories")
        )
    if options.json:
        echo_json(result)
        return
    rows = [
        (table, f"{n['created']:,} created, {n.get('present', n.get('unchanged', 0)):,} already present")
        for table, n in result.items()
        if isinstance(n, dict)
    ]
    rows.append(("updated trajectories", f"{result['trajectories']['updated']:,}"))
    rows.append(("seconds", str(result["seconds"])))
    print_table("fle-db import", rows)


@click.command()
@click.argument("source")
@click.argument("target")
@json_option
@click.pass_obj
def copy(options: Options, source: str, target: str) -> None:
    """Copy a whole database (history included) from SOURCE to TARGET, between any backends: URLs,
    or paths of SQLite files. TARGET must be new or empty. Shows a progress bar."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with existing_client(database_url(source)) as client, Progress(*columns, console=Console(stderr=True)) as bar:
        tasks: dict[str, TaskID] = {}

        def advance(table: str, rows: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.advance(tasks[table], rows)

        result = client.copy_to(target, progress=advance)
    report(options, "fle-db copy", result)
