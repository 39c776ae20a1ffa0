"""fle-db at scale: resume and state-load latency in a database of a million steps.

Builds one fle-db database per backend holding ``--steps`` steps:

* ``--state-trajectories`` x ``--state-steps`` real FLE-like checkpoints (step, agent output,
  environment feedback, ~53 KB game state; ``fle_db.workload``), each written with ``save_step``
  (one transaction each), spread evenly through the build so their rows are scattered;
* the rest as small spec-sized steps (~150 B) of trajectories of ``--steps-per-trajectory`` steps
  with random-looking ids, written with ``batch_save_steps`` in batches of ``--batch``.

**Measured:** build wall time and throughput (generation of the small steps excluded: only the
fle-db calls are timed; batch rate of the first and last 10 % of batches shows any slowdown as
the tables grow), database size, then with the database full:

* **resume** -- ``load_latest_checkpoint`` latency over ``--lookups`` random trajectories (every
  trajectory with game states plus random small ones), median and p99, overall and per kind;
* **load-any-state** -- ``load_game_state`` latency over ``--state-picks`` random checkpoints'
  state ids (as ``save_step`` returned them): median, p99, max.

Reads are checked (step numbers; a sample of states and trajectories compared with the input).
One run per backend, no repeats: this shows how latency holds up with size, not a comparison.

Usage: ``python -m benchmarks.scale [--steps 1000000] [--backends sqlite,postgres] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/scale.py``: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from benchmarks.common import (
    BACKENDS,
    DEFAULT_PG_URL,
    Item,
    PgServer,
    fmt_ms,
    gc_paused,
    generate_round_robin,
    machine_facts,
    make_console,
    mb,
    median,
    note_source_change,
    percentile,
    pg_table_bytes,
    print_machine,
    scratch_location,
    small_step,
    sqlite_bytes,
    timed_ms,
    write_json,
)
from fle_db import DatabaseClient

#: Small trajectories whose steps are read back and compared with the input.
VERIFIED_SMALL = 3
#: State picks also compared in full with the input.
VERIFIED_STATES = 20


@dataclass
class ScaleResult:
    """One backend's build and read measurements."""

    backend: str
    steps: int = 0
    trajectories: int = 0
    build_wall_s: float = float("nan")
    batch_steps: list[int] = field(default_factory=list)  # per batch_save_steps call
    batch_s: list[float] = field(default_factory=list)
    save_step_s: list[float] = field(default_factory=list)  # per save_step of a real checkpoint
    bytes_on_disk: int = 0
    resume_state_ms: list[float] = field(default_factory=list)  # trajectories with game states
    resume_small_ms: list[float] = field(default_factory=list)  # small-step trajectories (no state)
    any_state_ms: list[float] = field(default_factory=list)
    error: str | None = None


def small_tid(seed: int, index: int) -> str:
    """Id of small trajectory ``index``: random-looking, so inserts land all over the primary key."""
    return f"run-{random.Random(f'{seed}:scale-id:{index}').getrandbits(64):016x}"


def small_trajectory(seed: int, index: int, steps: int) -> list[dict[str, Any]]:
    """The steps of small trajectory ``index`` (deterministic, so verification can regenerate them)."""
    rng = random.Random(f"{seed}:scale-steps:{index}")
    tid = small_tid(seed, index)
    return [small_step(tid, number, rng) for number in range(steps)]


def small_rows(seed: int, trajectories: int, steps: int) -> Iterator[dict[str, Any]]:
    """Every small step, trajectory after trajectory."""
    for index in range(trajectories):
        yield from small_trajectory(seed, index, steps)


def rate(steps: Sequence[int], seconds: Sequence[float]) -> float:
    """Steps per second over the given calls."""
    total = sum(seconds)
    return sum(steps) / total if total else float("nan")


def build(
    db: DatabaseClient,
    result: ScaleResult,
    state_items: Sequence[Item],
    small_count: int,
    args: argparse.Namespace,
    progress: Progress,
) -> dict[tuple[str, int], str]:
    """Write everything; returns the game-state id ``save_step`` returned per real checkpoint."""
    batches = max(1, -(-small_count * args.steps_per_trajectory // args.batch))
    after_batch: list[list[Item]] = [[] for _ in range(batches)]
    for position, item in enumerate(state_items):
        after_batch[position * batches // max(len(state_items), 1)].append(item)
    rows = small_rows(args.seed, small_count, args.steps_per_trajectory)
    state_ids: dict[tuple[str, int], str] = {}
    task = progress.add_task(f"{result.backend} build", total=result.steps)
    start = time.perf_counter()
    for batch_number in range(batches):
        chunk = list(islice(rows, args.batch))  # generation: not timed
        if chunk:
            call = time.perf_counter()
            db.batch_save_steps(chunk)
            result.batch_s.append(time.perf_counter() - call)
            result.batch_steps.append(len(chunk))
        for item in after_batch[batch_number]:
            call = time.perf_counter()
            saved = db.save_step(
                item.record,
                agent_output=item.agent_output,
                environment_feedback=item.environment_feedback,
                game_state=item.state,
            )
            result.save_step_s.append(time.perf_counter() - call)
            state_ids[item.tid, item.step] = saved["game_state_id"]
        written = sum(result.batch_steps) + len(result.save_step_s)
        progress.update(
            task,
            completed=written,
            description=f"{result.backend} build: {rate(result.batch_steps, result.batch_s):,.0f} steps/s",
        )
    result.build_wall_s = time.perf_counter() - start
    return state_ids


def verify(
    db: DatabaseClient,
    state_items: Sequence[Item],
    state_ids: dict[tuple[str, int], str],
    small_count: int,
    args: argparse.Namespace,
) -> None:
    """Compare a sample with the input: every state trajectory's latest checkpoint,
    :data:`VERIFIED_STATES` states and :data:`VERIFIED_SMALL` whole small trajectories."""
    last = {item.tid: item for item in state_items}  # round-robin order: the last item per tid wins
    for tid, item in last.items():
        latest = db.load_latest_checkpoint(tid)
        if latest is None or latest["step"]["step_number"] != item.step or latest["game_state"] != item.state:
            raise AssertionError(f"resume {tid}: not the last checkpoint written")
    rng = random.Random(args.seed + 3)
    for item in rng.sample(list(state_items), min(VERIFIED_STATES, len(state_items))):
        if db.load_game_state(state_ids[item.tid, item.step]) != item.state:
            raise AssertionError(f"game state of {item.tid} step {item.step} differs from the input")
    for index in rng.sample(range(small_count), min(VERIFIED_SMALL, small_count)):
        expected = small_trajectory(args.seed, index, args.steps_per_trajectory)
        loaded = db.load_steps(expected[0]["trajectory_id"])
        if len(loaded) != len(expected) or any(
            got.get(key) != value for got, want in zip(loaded, expected, strict=True) for key, value in want.items()
        ):
            raise AssertionError(f"small trajectory {index} differs from the input")


def measure_reads(
    db: DatabaseClient,
    result: ScaleResult,
    state_items: Sequence[Item],
    state_ids: dict[tuple[str, int], str],
    small_count: int,
    args: argparse.Namespace,
) -> None:
    """Time resume over ``--lookups`` trajectories and ``load_game_state`` over ``--state-picks`` states."""
    rng = random.Random(args.seed + 5)
    state_last = {item.tid: item.step for item in state_items}
    small_picks = rng.sample(range(small_count), min(max(args.lookups - len(state_last), 0), small_count))
    lookups = [(tid, True, step) for tid, step in state_last.items()]
    lookups += [(small_tid(args.seed, index), False, args.steps_per_trajectory - 1) for index in small_picks]
    rng.shuffle(lookups)
    with gc_paused():
        for tid, has_state, last in lookups:
            ms, latest = timed_ms(db.load_latest_checkpoint, tid)
            if latest is None or latest["step"]["step_number"] != last:
                raise AssertionError(f"resume {tid}: wrong checkpoint")
            if (latest["game_state"] is not None) != has_state:
                raise AssertionError(f"resume {tid}: game state {'missing' if has_state else 'unexpected'}")
            (result.resume_state_ms if has_state else result.resume_small_ms).append(ms)
    with gc_paused():
        for _ in range(args.state_picks if state_items else 0):
            item = rng.choice(state_items)
            ms, state = timed_ms(db.load_game_state, state_ids[item.tid, item.step])
            if state.get("timestamp") != item.state["timestamp"]:
                raise AssertionError(f"game state of {item.tid} step {item.step}: wrong state")
            result.any_state_ms.append(ms)


def run_backend(
    backend: str,
    where: str,
    state_items: Sequence[Item],
    small_count: int,
    args: argparse.Namespace,
    progress: Progress,
) -> ScaleResult:
    """Build, verify and measure one backend's database at ``where``."""
    result = ScaleResult(backend)
    result.trajectories = small_count + len({item.tid for item in state_items})
    result.steps = small_count * args.steps_per_trajectory + len(state_items)
    db = DatabaseClient(where if backend == "postgres" else f"sqlite:///{where}", durability="full")
    try:
        state_ids = build(db, result, state_items, small_count, args, progress)
        result.bytes_on_disk = pg_table_bytes(where) if backend == "postgres" else sqlite_bytes(Path(where))
        verify(db, state_items, state_ids, small_count, args)
        measure_reads(db, result, state_items, state_ids, small_count, args)
    finally:
        db.close()
    return result


def _median_p99(values: Sequence[float]) -> str:
    return f"{fmt_ms(median(values))} / {fmt_ms(percentile(values, 0.99))} (n={len(values)})"


def print_results(console: Console, results: Sequence[ScaleResult]) -> None:
    """A build table and a read table, one row per backend."""
    built = Table(title="Build (fle-db calls timed; generation excluded)", title_justify="left")
    for header in (
        "Backend",
        "Steps",
        "Trajectories",
        "Build wall s",
        "batch_save_steps steps/s",
        "first 10 % -> last 10 %",
        "save_step ckpt/s",
        "MB on disk",
    ):
        built.add_column(header, justify="left" if header == "Backend" else "right")
    reads = Table(title="Reads at full size (ms)", title_justify="left")
    for header in (
        "Backend",
        "Resume all\nmedian / p99",
        "Resume, with state\nmedian / p99",
        "Resume, small steps\nmedian / p99",
        "Any state\nmedian / p99 / max",
    ):
        reads.add_column(header, justify="left" if header == "Backend" else "right")
    for r in results:
        if r.error is not None:
            built.add_row(r.backend, f"[red]FAILED: {r.error}[/red]", *["-"] * 6)
            continue
        decile = max(1, len(r.batch_s) // 10)
        built.add_row(
            r.backend,
            f"{r.steps:,}",
            f"{r.trajectories:,}",
            f"{r.build_wall_s:.1f}",
            f"{rate(r.batch_steps, r.batch_s):,.0f}",
            f"{rate(r.batch_steps[:decile], r.batch_s[:decile]):,.0f} -> "
            f"{rate(r.batch_steps[-decile:], r.batch_s[-decile:]):,.0f}",
            f"{rate([1] * len(r.save_step_s), r.save_step_s):,.0f}",
            mb(r.bytes_on_disk),
        )
        reads.add_row(
            r.backend,
            _median_p99(r.resume_state_ms + r.resume_small_ms),
            _median_p99(r.resume_state_ms),
            _median_p99(r.resume_small_ms),
            f"{fmt_ms(median(r.any_state_ms))} / {fmt_ms(percentile(r.any_state_ms, 0.99))} / "
            f"{fmt_ms(max(r.any_state_ms, default=float('nan')))}",
        )
    console.print(built)
    console.print(reads)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scale benchmark; returns the exit status (1 if a backend failed)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="total steps (default 1,000,000)")
    parser.add_argument("--steps-per-trajectory", type=int, default=100, help="small trajectories' length (100)")
    parser.add_argument("--batch", type=int, default=10_000, help="steps per batch_save_steps call (10,000)")
    parser.add_argument("--state-trajectories", type=int, default=20, help="trajectories with game states (20)")
    parser.add_argument("--state-steps", type=int, default=50, help="checkpoints per state trajectory (50)")
    parser.add_argument("--lookups", type=int, default=1000, help="trajectories resumed (1000)")
    parser.add_argument("--state-picks", type=int, default=200, help="random states loaded (200)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for scratch databases")
    parser.add_argument("--dir", type=Path, default=None, help="directory for SQLite files (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results to this JSON file")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        parser.error(f"--backends: choose from {', '.join(BACKENDS)}")
    if (
        min(args.steps, args.steps_per_trajectory, args.batch, args.lookups) < 1
        or min(args.state_trajectories, args.state_steps, args.state_picks) < 0
    ):
        parser.error("sizes must be >= 1 (state sizes >= 0)")
    state_total = args.state_trajectories * args.state_steps
    small_count = max(args.steps - state_total, 0) // args.steps_per_trajectory

    console = make_console()
    pg = PgServer(args.pg_url) if "postgres" in backends else None
    own_dir = args.dir is None
    data_dir: Path = Path(tempfile.mkdtemp(prefix="fle_bench_")) if own_dir else args.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        facts = machine_facts(pg, data_dir)
        print_machine(console, facts)
        console.print(
            f"{small_count:,} small trajectories x {args.steps_per_trajectory} steps (batches of {args.batch:,}) + "
            f"{args.state_trajectories} x {args.state_steps} real checkpoints (save_step) = "
            f"{small_count * args.steps_per_trajectory + state_total:,} steps per backend"
        )
        state_items = generate_round_robin(args.state_trajectories, args.state_steps, args.seed)
        gc.collect()
        gc.freeze()  # the pre-generated checkpoints are never garbage: keep the cyclic GC from rescanning them
        results = []
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            for backend in backends:
                try:
                    with scratch_location(backend, pg, data_dir, f"scale_{backend}") as where:
                        result = run_backend(backend, where, state_items, small_count, args, progress)
                except Exception as exc:  # report the other backend anyway
                    result = ScaleResult(backend, error=f"{type(exc).__name__}: {exc}")
                    console.print(f"[red]{backend} FAILED: {result.error}[/red]")
                results.append(result)
        print_results(console, results)
        note_source_change(console, facts)
        elapsed = time.perf_counter() - started
        console.print(f"Wall time {elapsed:.1f} s")
        write_json(console, args, "scale", facts, elapsed, results=[asdict(r) for r in results])
        return 1 if any(r.error for r in results) else 0
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
