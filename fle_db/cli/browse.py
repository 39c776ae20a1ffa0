"""``fle-db list`` and ``fle-db show``: browsing runs from the terminal; ``fle-db ui``: in a browser.

Both read through the public API the viewer uses too: ``list_trajectories`` (one page, newest
first) and ``load_trajectory`` / ``load_steps`` / ``load_checkpoint``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click
from rich import box
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from ..client import DatabaseClient
from ..config import Settings
from ..errors import NotFoundError
from ..readable import agent_code, feedback_text
from ..units import iec_bytes
from ._common import Options, console, echo_json, json_option, location, open_client, print_table, text

#: Characters of code or output a preview keeps (``--step N`` shows all of it).
_PREVIEW_CHARS = 60


def _open_existing(options: Options, trajectory_id: str | None = None) -> DatabaseClient:
    """The database, read-only in spirit: never created or migrated by a command that only reads.

    Raises:
        NotFoundError: there is no database there, or it was never initialised.
    """
    settings = Settings.resolve(options.url)
    where = location(settings)
    subject = f"trajectory {trajectory_id!r} does not exist: " if trajectory_id else ""
    if not settings.database_exists():
        raise NotFoundError(f"{subject}there is no database at {where} (run `fle-db demo` or `fle-db init`)")
    client = open_client(options, writes=False, auto_migrate=False)
    if client.get_migration_status()["current_version"] is None:
        client.close()
        raise NotFoundError(f"{subject}the database at {where} is not initialised (run `fle-db init`)")
    return client


@click.command("list")
@click.option("--task", help="Only trajectories of this task.")
@click.option("--agent", "agent_type", help="Only trajectories of this agent type.")
@click.option("--success/--failed", "success", default=None, help="Only successful / only failed trajectories.")
@click.option("--since", metavar="ISO", help="Only trajectories started at or after this time (ISO 8601, offset).")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most N rows.")
@json_option
@click.pass_obj
def list_command(
    options: Options,
    task: str | None,
    agent_type: str | None,
    success: bool | None,
    since: str | None,
    limit: int,
) -> None:
    """List trajectories, newest first: id, task, agent, steps, reward, success, start, fork parent."""
    with _open_existing(options) as client:
        page = client.list_trajectories(
            task=task, agent_type=agent_type, success=success, since=since, limit=limit, order_by="start_time"
        )
    if options.json:
        echo_json(page)
        return
    rows: list[dict[str, Any]] = page["trajectories"]
    if not rows:
        click.echo(
            "No trajectories match." if (task or agent_type or success is not None or since) else "No trajectories yet."
        )
        return
    forks = any(row["parent_trajectory_id"] for row in rows)
    headers = ["id", "task", "agent", "steps", "reward", "ok", "started (UTC)"] + (["fork of"] if forks else [])
    cells = []
    for row in rows:
        parent = row["parent_trajectory_id"]
        line = [
            row["id"],
            row["task"] or "-",
            row["agent_type"] or "-",
            f"{row['steps']:,}",
            "-" if row["total_reward"] is None else f"{row['total_reward']:g}",
            {True: "yes", False: "no", None: "-"}[row["success"]],
            _short_time(row["start_time"]),
        ]
        if forks:  # the column costs width that pages without forks do not need
            line.append(f"{parent} step {row['parent_step_number']}" if parent else "")
        cells.append(line)
    out = console()
    widths = _fit(headers, cells, flexible={1, 2, 7}, width=out.width)
    if widths is None:  # too narrow for a table: one block per run, the id alone on its line
        for line in cells:
            out.print(Text(line[0], style="bold"))
            out.print(Text("  " + " | ".join(f"{h} {c}" for h, c in zip(headers[1:], line[1:], strict=True) if c)))
        _more(page, limit)
        return
    table = _table()
    for index, (header, width) in enumerate(zip(headers, widths, strict=True)):
        # Only task, agent and fork parent fold; the id (copied into `fle-db show ID`) never wraps.
        table.add_column(header, width=width, no_wrap=index not in (1, 2, 7), overflow="fold",
                         justify="right" if header in ("steps", "reward") else "left")  # fmt: skip
    for line in cells:
        table.add_row(*map(Text, line))
    out.print(table)
    _more(page, limit)


def _more(page: dict[str, Any], limit: int) -> None:
    if page["next_cursor"] is not None:
        click.echo(f"(the first {limit}; --limit N shows more, --json gives a cursor for the rest)")


def _fit(headers: list[str], rows: list[list[str]], *, flexible: set[int], width: int) -> list[int] | None:
    """Column widths for a table of ``rows`` on ``width`` characters (one space between
    columns): every column as wide as its widest cell, except that the ``flexible`` ones share
    what the others leave, in proportion to their widest cell, at least 5 each (None when even
    that does not fit)."""
    natural = [max(len(cell) for cell in (header, *(row[i] for row in rows))) for i, header in enumerate(headers)]
    flex = [i for i in range(len(headers)) if i in flexible]
    room = width - (len(headers) - 1) - sum(w for i, w in enumerate(natural) if i not in flexible)
    wanted = sum(natural[i] for i in flex)
    if wanted <= room:
        return natural
    if room < sum(min(natural[i], 5) for i in flex):
        return None
    fitted = list(natural)
    for i in flex:
        fitted[i] = max(min(natural[i], 5), room * natural[i] // wanted)
    return fitted if sum(fitted) + len(fitted) - 1 <= width else None


def _table() -> Table:
    """A borderless table with one space between columns: the most that fits in 80 columns."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=0)


def _short_time(value: str | None) -> str:
    """An ISO 8601 time as ``2026-12-04 15:18`` in UTC (as given when it is not ISO 8601)."""
    if not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return value
    return (parsed.astimezone(UTC) if parsed.tzinfo else parsed).strftime("%Y-%m-%d %H:%M")


@click.command()
@click.argument("trajectory_id")
@click.option("--steps", "list_steps", is_flag=True, help="Also list every step: reward, code and output, shortened.")
@click.option("--step", "step_number", type=click.IntRange(min=0), help="Show step N in full: code, output, reward.")
@click.option("--state", is_flag=True, help="Show the game state (of --step N, else of the latest step) by key.")
@json_option
@click.pass_obj
def show(options: Options, trajectory_id: str, list_steps: bool, step_number: int | None, state: bool) -> None:
    """Show a trajectory: its record, metadata, steps and latest step; with --step N one step's
    code (highlighted), output, feedback and reward; with --state its game state by top-level key."""
    with _open_existing(options, trajectory_id) as client:
        trajectory = client.load_trajectory(trajectory_id)
        if step_number is not None or state:
            checkpoint = _checkpoint(client, trajectory_id, step_number)
            _show_checkpoint(options, trajectory_id, checkpoint, with_state=state)
            return
        metadata = client.load_metadata(trajectory_id)
        steps = client.load_steps(trajectory_id, with_parts=list_steps)
    numbers = [step["step_number"] for step in steps]
    # A fork's steps continue from its fork point (forks numbered from 0 before that, too).
    forked_at = trajectory.get("parent_step_number")
    first = 0 if forked_at is None or numbers[:1] == [0] else forked_at + 1
    result: dict[str, Any] = {
        "trajectory": trajectory,
        "metadata": metadata,
        "steps": len(numbers),
        "latest_step_number": numbers[-1] if numbers else None,
        "contiguous": numbers == list(range(first, first + len(numbers))),
    }
    if list_steps:
        result["step_list"] = steps
    if options.json:
        echo_json(result)
        return
    rows = [(key, text(value)) for key, value in trajectory.items()]
    rows += [(f"metadata.{key}", text(value)) for key, value in metadata.items()]
    rows.append(("steps", str(len(numbers)) + ("" if result["contiguous"] else f" (not contiguous from {first})")))
    rows.append(("latest step", "none" if not numbers else f"{numbers[-1]} (fle-db show {trajectory_id} --step N)"))
    print_table(f"trajectory {trajectory_id}", rows)
    if list_steps:
        _print_steps(steps)


def _checkpoint(client: DatabaseClient, trajectory_id: str, step_number: int | None) -> dict[str, Any]:
    if step_number is not None:
        return client.load_checkpoint(trajectory_id, step_number)
    latest = client.load_latest_checkpoint(trajectory_id)
    if latest is None:
        raise NotFoundError(f"trajectory {trajectory_id!r} has no step yet")
    return latest


def _print_steps(steps: list[dict[str, Any]]) -> None:
    out = console()
    # Code and output share what the step and reward columns leave of the line (one line each).
    preview = max(out.width - 5 - 8 - 3, 20)
    code_width = preview * 11 // 20
    table = _table()
    table.add_column("step", justify="right", no_wrap=True)
    table.add_column("reward", justify="right", no_wrap=True)
    table.add_column("code", no_wrap=True)
    table.add_column("output", no_wrap=True)
    for step in steps:
        reward = step.get("reward")
        code = agent_code(step, step.get("agent_output"))
        output = feedback_text(step, step.get("environment_feedback"))
        table.add_row(
            Text(str(step["step_number"])),
            Text(f"{reward:g}" if isinstance(reward, int | float) else "-"),
            Text(_first_line(code, code_width)),
            Text(_first_line(output, preview - code_width)),
        )
    out.print(table)


def _first_line(value: str | None, width: int) -> str:
    """The first line that says something (code often opens with a comment: it is kept), cut
    to ``width`` characters with an ellipsis."""
    lines = [line.strip() for line in (value or "").splitlines() if line.strip()]
    if not lines:
        return "-"
    return lines[0] if len(lines[0]) <= width else lines[0][: width - 1] + "…"


def _show_checkpoint(options: Options, trajectory_id: str, checkpoint: dict[str, Any], *, with_state: bool) -> None:
    step, output, feedback = checkpoint["step"], checkpoint["agent_output"], checkpoint["environment_feedback"]
    number = step["step_number"]
    if options.json:
        # The state is often most of the bytes: only with --state, as in the table view.
        echo_json(
            checkpoint if with_state else {key: value for key, value in checkpoint.items() if key != "game_state"}
        )
        return
    out = console()
    rows = [("reward", text(step.get("reward"))), ("game state", step.get("game_state_id") or "none")]
    rows += [(f"step.{key}", text(value)) for key, value in step.items() if key not in _SHOWN_STEP_KEYS]
    rows += [(f"agent_output.{key}", text(value)) for key, value in (output or {}).items() if key != "code"]
    inherited = checkpoint.get("inherited_from")
    where = f" (inherited from {inherited['trajectory_id']})" if inherited else ""
    print_table(f"trajectory {trajectory_id}, step {number}{where}", rows)
    code = agent_code(step, output)
    out.rule("code", align="left")
    out.print(Syntax(code, "python", word_wrap=True, theme="ansi_dark") if code else Text("(none)"))
    out.rule("output", align="left")
    out.print(Text(feedback_text(step, feedback) or "(none)"))
    if with_state:
        _print_state(checkpoint["game_state"], number)


#: Step keys ``show --step`` prints in their own place (the rest go into the table).
_SHOWN_STEP_KEYS = frozenset(("trajectory_id", "step_number", "reward", "game_state_id", "action", "observation"))


def _without_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in checkpoint.items() if key != "game_state"}


def _print_state(state: dict[str, Any] | None, number: int) -> None:
    if state is None:
        click.echo(f"step {number} has no game state")
        return
    rows = []
    for key, value in state.items():
        encoded = json.dumps(value)
        rows.append((key, f"{_kind(value)}, {iec_bytes(len(encoded.encode()))}: {_preview(encoded)}"))
    print_table(f"game state of step {number} (by top-level key; --json --state for all of it)", rows)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"object of {len(value):,} keys"
    if isinstance(value, list):
        return f"list of {len(value):,}"
    return type(value).__name__ if value is not None else "null"


def _preview(encoded: str) -> str:
    return encoded if len(encoded) <= _PREVIEW_CHARS else encoded[: _PREVIEW_CHARS - 3] + "..."


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind; not loopback needs a token.")
@click.option("--port", type=int, default=8765, show_default=True, help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the viewer in the default browser.")
@click.option("--token", envvar="FLE_DB_UI_TOKEN", default=None, help="Access token (default: random off loopback).")
@json_option
@click.pass_obj
def ui(options: Options, host: str, port: int, open_browser: bool, token: str | None) -> None:
    """Serve a local read-only web viewer: trajectories, rewards, steps, diffs, trees, status."""
    from ..ui.serve import run  # imported here: the web stack loads only for this command

    run(options.url, host=host, port=port, open_browser=open_browser, token=token, as_json=options.json)
