"""The demo: a simulated FLE agent that checkpoints every step, crashes, and resumes.

:func:`run_demo` writes several trajectories of :mod:`fle_db.workload` data through the public
:class:`~fle_db.DatabaseClient` API, one ``save_step`` (step, agent output, environment feedback,
game state) per step, exactly as an FLE agent loop would. One trajectory "crashes" part way: the
agent object and everything it held in memory are dropped. The demo then restarts it the way a new
process would, from the database alone: it reads the workload parameters from the trajectory's
metadata and the newest checkpoint with ``load_latest_checkpoint``, checks that checkpoint is the
one saved before the crash, and continues from the next step with the loaded game state. Finally
every trajectory is read back, checked to hold all its steps, and finished (``end_time``,
``total_reward``, ``success``).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .client import DatabaseClient
from .errors import DataIntegrityError, ValidationError
from .units import iec_bytes
from .validation import is_int
from .workload import Workload

log = logging.getLogger("fle_db")

MAX_TRAJECTORIES = 10_000
MAX_STEPS = 1_000_000
#: The summary lists this many trajectory ids in full (the rest: ``fle-db list``).
_IDS_SHOWN = 10


class SimulatedCrash(BaseException):
    """Raised inside the demo's agent loop to simulate the agent process dying (Ctrl-C, OOM kill).

    Like ``KeyboardInterrupt`` it derives from ``BaseException``, so ``except Exception`` blocks
    do not swallow it. ``step_number`` is the last step saved before the crash.
    """

    def __init__(self, trajectory_id: str, step_number: int) -> None:
        super().__init__(f"simulated crash of trajectory {trajectory_id!r} after step {step_number}")
        self.trajectory_id = trajectory_id
        self.step_number = step_number


class _Agent:
    """A simulated FLE agent: it holds the environment's current game state and, per step,
    "runs" the program of that step and checkpoints the result. All its state is in memory, so
    dropping the object is what a crash does."""

    def __init__(
        self,
        client: DatabaseClient,
        workload: Workload,
        trajectory_id: str,
        trajectory_index: int,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.workload = workload
        self.trajectory_id = trajectory_id
        self.trajectory_index = trajectory_index
        self.state = state  # what the FLE environment would hold: the current game state

    def run(
        self,
        first_step: int,
        stop: int,
        *,
        crash_after: int | None,
        on_saved: Callable[[dict[str, Any], float], None],
    ) -> None:
        """Run steps ``first_step .. stop - 1``, one checkpoint each; raise :class:`SimulatedCrash`
        right after saving step ``crash_after`` (if given). ``on_saved(ids, seconds)`` is told of
        every save and the time ``save_step`` took."""
        for number in range(first_step, stop):
            parts = self.workload.checkpoint(self.trajectory_index, number, self.trajectory_id)
            state = parts["game_state"]
            if self.state is not None:
                _check_continues(self.state, state, self.trajectory_id, number)
            started = time.perf_counter()
            ids = self.client.save_step(
                parts["step"],
                agent_output=parts["agent_output"],
                environment_feedback=parts["environment_feedback"],
                game_state=state,
            )
            on_saved(ids, time.perf_counter() - started)
            self.state = state
            if number == crash_after:
                raise SimulatedCrash(self.trajectory_id, number)


def run_demo(
    client: DatabaseClient,
    *,
    trajectories: int = 5,
    steps: int = 40,
    console: Console | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Simulate FLE agent runs against ``client``, with one crash and resume; return the summary.

    Writes ``trajectories`` new trajectories of ``steps`` checkpoints each (ids
    ``demo-<UTC time>-<random>-<i>``, unique per run, so the demo can run again on the same
    database), shows a progress bar and prints a summary table on ``console`` (default: a new
    stdout console; the bar renders live only on a terminal and is printed once otherwise).
    Trajectory ``trajectories // 2`` crashes after step ``steps // 2 - 1`` and is resumed from its
    latest checkpoint. Data is deterministic in ``seed`` (see :mod:`fle_db.workload`).

    Returns:
        ``{"run_id", "backend", "database", "existing_trajectories", "seed", "trajectories", "trajectory_ids",
        "steps_per_trajectory", "steps_written", "elapsed_s", "steps_per_s", "save_ms_mean",
        "interrupted_trajectory_id", "interrupted_after_step", "resumed_from_step",
        "continued_at_step", "resume_latency_ms", "resumed_state_verified",
        "successful_trajectories", "database_bytes"}``; ``database_bytes`` is the size the
        backend reports (``get_statistics()["size"]``: an SQLite file plus its ``-wal``, the
        tables of a server database); ``existing_trajectories`` counts those the database held
        before (the demo says when it adds to an existing database). Steps are dated today: the
        simulated run, ~30 s per step, ends now.

    Raises:
        ValidationError: ``trajectories`` not in 1..10000 or ``steps`` not in 2..1000000.
        DataIntegrityError: the database returned something other than what was saved (the
            latest checkpoint after the crash, or a trajectory's steps). Any error of ``client``.
    """
    _check_int("trajectories", trajectories, 1, MAX_TRAJECTORIES)
    _check_int("steps", steps, 2, MAX_STEPS)
    _check_int("seed", seed, -(2**63), 2**63 - 1)
    console = console if console is not None else Console()
    now = datetime.now(UTC)
    # Dated today: the simulated run (~30 s per step) ends now.
    workload = Workload(seed, start=int(now.timestamp()) - 30 * steps)
    run_id = f"demo-{now:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    ids = [f"{run_id}-{index}" for index in range(trajectories)]
    victim, crash_after = trajectories // 2, steps // 2 - 1
    saved: dict[str, dict[str, Any]] = {}  # the harness's record of the last save per trajectory
    save_seconds: list[float] = []
    log.info("demo %s: %d trajectories x %d steps on %s", run_id, trajectories, steps, client.settings.safe_url())
    existing = client.get_statistics()["trajectories"]
    if existing:
        console.print(
            f"adding {_count(trajectories, 'trajectory', 'trajectories')} to the existing database at "
            f"{client.settings.location} ({_count(existing, 'trajectory', 'trajectories')} already there)",
            markup=False,
            highlight=False,
        )

    columns = (
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("writing", total=trajectories * steps)

        def on_saved(result: dict[str, Any], seconds: float) -> None:
            saved[result["trajectory_id"]] = result
            save_seconds.append(seconds)
            progress.advance(task)

        started = time.perf_counter()
        for index, trajectory_id in enumerate(ids):
            progress.update(task, description=f"trajectory {index + 1}/{trajectories}")
            client.save_trajectory(workload.trajectory(index, trajectory_id))
            client.save_metadata(trajectory_id, "model", workload.model(index))
            client.save_metadata(trajectory_id, "seed", seed)
            client.save_metadata(trajectory_id, "demo_run", run_id)
            client.save_metadata(
                trajectory_id,
                "workload",
                {"seed": seed, "trajectory_index": index, "steps": steps, "start": workload.start},
            )
            agent = _Agent(client, workload, trajectory_id, index)
            try:
                agent.run(0, steps, crash_after=crash_after if index == victim else None, on_saved=on_saved)
            except SimulatedCrash as crash:
                progress.console.print(
                    f"[yellow]crash[/] (simulated) of [bold]{crash.trajectory_id}[/] after step "
                    f"{crash.step_number}: its agent and memory are gone"
                )
                log.info("demo %s: %s", run_id, crash)
            del agent  # a crashed agent's memory is lost; a finished one is done

        # -- restart the crashed trajectory as a new process would: from the database alone --
        victim_id = ids[victim]
        progress.update(task, description=f"resuming {victim_id}")
        resume_started = time.perf_counter()
        latest = client.load_latest_checkpoint(victim_id)
        resume_ms = (time.perf_counter() - resume_started) * 1000
        if latest is None:
            raise DataIntegrityError(f"trajectory {victim_id!r} has no checkpoint to resume from")
        params = client.load_metadata(victim_id)["workload"]
        resumed_from = _verify_resume(latest, saved[victim_id], workload, victim_id, victim, crash_after)
        agent = _Agent(
            client,
            Workload(params["seed"], start=params["start"]),
            victim_id,
            params["trajectory_index"],
            state=latest["game_state"],
        )
        progress.console.print(
            f"[green]resume[/] [bold]{victim_id}[/] from checkpoint step {resumed_from} "
            f"({resume_ms:.1f} ms, state verified), continuing at step {resumed_from + 1}"
        )
        agent.run(resumed_from + 1, params["steps"], crash_after=None, on_saved=on_saved)
        elapsed = time.perf_counter() - started
        progress.update(task, description="done")

    successes = _finish(client, workload, ids, steps)
    summary: dict[str, Any] = {
        "run_id": run_id,
        "backend": client.settings.backend,
        "database": client.settings.location,
        "existing_trajectories": existing,
        "seed": seed,
        "trajectories": trajectories,
        "trajectory_ids": ids,
        "steps_per_trajectory": steps,
        "steps_written": len(save_seconds),
        "elapsed_s": round(elapsed, 3),
        "steps_per_s": round(len(save_seconds) / elapsed, 1) if elapsed > 0 else None,
        "save_ms_mean": round(1000 * sum(save_seconds) / len(save_seconds), 3),
        "interrupted_trajectory_id": victim_id,
        "interrupted_after_step": crash_after,
        "resumed_from_step": resumed_from,
        "continued_at_step": resumed_from + 1,
        "resume_latency_ms": round(resume_ms, 3),
        "resumed_state_verified": True,
        "successful_trajectories": successes,
        "database_bytes": client.get_statistics()["size"],
    }
    console.print(_summary_table(summary))
    return summary


def _verify_resume(
    latest: dict[str, Any],
    last_saved: dict[str, Any],
    workload: Workload,
    trajectory_id: str,
    trajectory_index: int,
    crash_after: int,
) -> int:
    """Check the latest checkpoint is the one saved just before the crash; return its step number.

    ``last_saved`` is the harness's record of that save (the ids ``save_step`` returned); the game
    state is compared in full with the one the workload generated for that step."""
    step = latest["step"]
    number = step["step_number"]
    if number != crash_after or number != last_saved["step_number"]:
        raise DataIntegrityError(
            f"the latest checkpoint of {trajectory_id!r} is step {number}, but step {crash_after} was saved last"
        )
    if step["game_state_id"] != last_saved["game_state_id"]:
        raise DataIntegrityError(f"the latest checkpoint of {trajectory_id!r} points at another game state")
    if latest["game_state"] != workload.game_state(trajectory_index, crash_after):
        raise DataIntegrityError(f"the game state loaded for {trajectory_id!r} differs from the one saved")
    return int(number)


def _check_continues(previous: dict[str, Any], state: dict[str, Any], trajectory_id: str, step: int) -> None:
    """The environment moves forward: time advances and research is never lost."""
    if state["timestamp"] <= previous["timestamp"]:
        raise DataIntegrityError(f"step {step} of {trajectory_id!r} does not continue from the restored game state")
    before = {name for name, tech in previous["research"]["technologies"].items() if tech["researched"]}
    after = {name for name, tech in state["research"]["technologies"].items() if tech["researched"]}
    if not before <= after:
        raise DataIntegrityError(f"step {step} of {trajectory_id!r} lost research of the restored game state")


def _finish(client: DatabaseClient, workload: Workload, ids: list[str], steps: int) -> int:
    """Read every trajectory back, check its steps are exactly 0..steps-1, and record
    ``end_time``, ``total_reward`` and ``success``. Returns the number of successes."""
    successes = 0
    for trajectory_id in ids:
        loaded = client.load_steps(trajectory_id)
        numbers = [step["step_number"] for step in loaded]
        if numbers != list(range(steps)):
            raise DataIntegrityError(
                f"trajectory {trajectory_id!r} holds steps {_ranges(numbers)}, expected 0..{steps - 1}"
            )
        total = round(sum(step["reward"] for step in loaded), 2)
        success = total >= workload.success_reward(steps)
        successes += success
        client.save_trajectory(
            {"id": trajectory_id, "end_time": loaded[-1]["timestamp"], "total_reward": total, "success": success}
        )
    return successes


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="fle-db demo", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    ids, before = summary["trajectory_ids"], summary["existing_trajectories"]
    shown = ids if len(ids) <= _IDS_SHOWN else [*ids[: _IDS_SHOWN - 1], f"... ({len(ids) - _IDS_SHOWN + 1} more)"]
    rows = (
        ("database", f"{summary['backend']}: {summary['database']}"),
        ("trajectories", f"{len(ids)}, {summary['successful_trajectories']} successful:\n" + "\n".join(shown)),
        (
            "steps written",
            f"{summary['steps_written']} ({summary['steps_per_trajectory']} per trajectory, all verified)",
        ),
        ("throughput", f"{summary['steps_per_s']} steps/s over {summary['elapsed_s']:.2f} s"),
        ("save_step latency", f"{summary['save_ms_mean']:.2f} ms mean"),
        (
            "interrupted",
            f"{summary['interrupted_trajectory_id']} after step {summary['interrupted_after_step']} (simulated crash)",
        ),
        (
            "resumed",
            f"from checkpoint step {summary['resumed_from_step']}, continued at step {summary['continued_at_step']}; "
            "game state verified",
        ),
        ("resume latency", f"{summary['resume_latency_ms']:.2f} ms (load_latest_checkpoint)"),
        (
            "database size",
            iec_bytes(summary["database_bytes"]) + (f" (with {before:,} earlier trajectories)" if before else ""),
        ),
    )
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _ranges(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers[:20])) + (" ..." if len(numbers) > 20 else "") if numbers else "none"


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not is_int(value) or not low <= value <= high:
        raise ValidationError(f"{name} must be an integer in {low}..{high}, got {value!r}")


__all__ = ["SimulatedCrash", "run_demo"]
