"""``fle-db tail``: print steps as they are committed, until Ctrl-C or SIGTERM (exit 0)."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any

import click

from ..instants import from_us, parse_instant
from ..readable import agent_code
from ._common import Options, json_option, open_client


class _Stopped(Exception):
    """SIGTERM arrived."""


def _raise_stop(_signum: int, _frame: object) -> None:
    raise _Stopped


def _line(item: dict[str, Any]) -> str:
    """time, trajectory, step, reward, first line of the action (the agent's code)."""
    step = item["step"]
    code = agent_code(step, item.get("agent_output")) or ""
    first = next((line.strip() for line in code.splitlines() if line.strip()), "-")
    at = from_us(parse_instant(item["committed_at"])).astimezone().strftime("%H:%M:%S.%f")[:-3]
    reward = step.get("reward")
    shown = f"{reward:g}" if isinstance(reward, (int, float)) and not isinstance(reward, bool) else "-"
    return f"{at}  {item['trajectory_id']}  {item['step_number']}  {shown}  {first[:120]}"


def _document(item: dict[str, Any]) -> dict[str, Any]:
    step = item["step"]
    return {
        "cursor": item["cursor"],
        "committed_at": item["committed_at"],
        "trajectory_id": item["trajectory_id"],
        "step_number": item["step_number"],
        "reward": step.get("reward"),
        "action": agent_code(step, item.get("agent_output")),
    }


@click.command("tail")
@click.option("--trajectory", "trajectory_ids", multiple=True, metavar="ID", help="Only this trajectory (repeatable).")
@click.option("--task", default=None, help="Only trajectories of this task.")
@click.option("--cursor", default=None, help="Resume just after the step that printed this cursor (--json shows it).")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), default=None, help="Exit after N seconds without a step."
)
@json_option
@click.pass_obj
def tail(
    options: Options, trajectory_ids: tuple[str, ...], task: str | None, cursor: str | None, timeout: float | None
) -> None:
    """Print each step as it is committed, by any process or machine, in commit order: time,
    trajectory, step, reward, first line of the action. Runs until Ctrl-C or SIGTERM (exit 0).
    With --json: one JSON object per line (cursor, committed_at, trajectory_id, step_number,
    reward, action)."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        with open_client(options, writes=False, backup_interval=0) as client:
            with client.tail(list(trajectory_ids) or None, task, cursor, with_parts=True, timeout=timeout) as steps:
                for item in steps:
                    click.echo(json.dumps(_document(item)) if options.json else _line(item))
                    sys.stdout.flush()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
