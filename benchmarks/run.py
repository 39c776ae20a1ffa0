"""FLE-like checkpoints, one durable transaction each: fle-db beside raw drivers and LangGraph.

Reproduces the "Measured performance" methodology of ``/work/shared/reference/peers.md``:
T trajectories x S steps of the deterministic FLE-like workload (``fle_db.workload``; ~7.4 KB of
step-side JSON and ~53 KB of game state each) written round-robin (step 0 of every trajectory,
then step 1, ...), every system in a fresh database per repeat, systems interleaved across
repeats. Data generation is not timed; serialisation is, for every system.

Measured per system and backend:

* **write steps/s** -- checkpoints / wall time of the write loop;
* **resume ms** -- median over all trajectories of loading + decoding the latest checkpoint;
* **load-trajectory ms** -- median over all trajectories of loading + decoding its S steps and states;
* **load-any-state ms** -- median and max over 200 random (trajectory, step) picks;
* **bytes on disk** -- SQLite file + ``-wal`` + ``-shm`` with the writer open and after close;
  PostgreSQL: summed ``pg_total_relation_size`` of the system's tables;
* **% of raw JSON** -- bytes on disk / the orjson bytes the raw baselines serialise, and the same
  counting only what the data added: (bytes after close - bytes of the system's freshly
  initialised empty database) / raw JSON bytes;
* **commit floor** -- per backend, the time of the smallest durable write transaction (one
  autocommit UPDATE of one integer), measured right before each system's run, and that system's
  time per checkpoint divided by it.

Every system's stored data is checked against the input before its reads are timed.

Python's cyclic garbage collector is paused in the timed phases (``--keep-gc`` leaves it on).

Usage: ``python -m benchmarks.run [--trajectories 20] [--steps 50] [--repeat 3]
[--backends sqlite,postgres] [--systems fle-db,sqlite3-txn,...] [--json PATH] [--keep-gc]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/run.py``: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console, JustifyMethod
from rich.table import Table

from benchmarks.common import (
    BACKENDS,
    DEFAULT_PG_URL,
    Item,
    PgServer,
    fmt_ms,
    fmt_rate,
    fmt_ratio,
    gc_paused,
    generate_round_robin,
    machine_facts,
    make_console,
    mb,
    median,
    note_source_change,
    pg_table_bytes,
    print_machine,
    raw_json_bytes,
    rotated,
    scratch_location,
    sqlite_bytes,
    timed_ms,
    trajectory_id,
    write_json,
)
from benchmarks.systems import SPECS, SYSTEM_NAMES, Loaded, System, SystemSpec, commit_floor

#: Random (trajectory, step) picks for the load-any-state metric.
STATE_PICKS = 200
#: Of those, how many are also compared with the input during verification.
VERIFIED_PICKS = 20
#: Transactions timed for the commit floor before each system's run.
FLOOR_COMMITS = 300


class VerificationError(AssertionError):
    """A system returned something other than what was written."""


@dataclass
class RunResult:
    """One system on one backend in one repeat."""

    system: str
    backend: str
    repeat: int
    position: int  # place in this repeat's run order
    bulk: bool
    durability: str = ""
    write_s: float = float("nan")
    steps_per_s: float = float("nan")
    resume_ms: list[float] = field(default_factory=list)
    load_trajectory_ms: list[float] = field(default_factory=list)
    any_state_ms: list[float] = field(default_factory=list)
    bytes_open: int = 0
    bytes_closed: int = 0
    checks: int = 0  # verified reads
    error: str | None = None


@dataclass
class FloorResult:
    """The commit floor of one backend, measured right before ``system``'s run in one repeat
    (see :func:`benchmarks.systems.commit_floor`)."""

    system: str
    backend: str
    repeat: int
    durability: str = ""
    commit_s: float = float("nan")
    error: str | None = None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trajectories", type=int, default=20, help="trajectories T (default 20)")
    parser.add_argument("--steps", type=int, default=50, help="steps S per trajectory (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs of every system (default 3)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument(
        "--systems", default=",".join(SYSTEM_NAMES), help=f"comma-separated of: {','.join(SYSTEM_NAMES)}"
    )
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for scratch databases")
    parser.add_argument("--dir", type=Path, default=None, help="directory for SQLite files (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results to this JSON file")
    parser.add_argument(
        "--keep-gc",
        action="store_true",
        help="leave Python's cyclic garbage collector running during timed phases (default: paused)",
    )
    args = parser.parse_args(argv)
    if args.trajectories < 1 or args.steps < 1 or args.repeat < 1:
        parser.error("--trajectories, --steps and --repeat must be >= 1")
    return args


def select_specs(backends: str, systems: str) -> list[SystemSpec]:
    """The specs matching the comma-separated backend and system names (unknown names are errors)."""
    wanted_backends = [b.strip() for b in backends.split(",") if b.strip()]
    wanted_systems = [s.strip() for s in systems.split(",") if s.strip()]
    for name in wanted_backends:
        if name not in BACKENDS:
            raise SystemExit(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    for name in wanted_systems:
        if name not in SYSTEM_NAMES:
            raise SystemExit(f"unknown system {name!r}; choose from {', '.join(SYSTEM_NAMES)}")
    specs = [spec for spec in SPECS if spec.backend in wanted_backends and spec.name in wanted_systems]
    if not specs:
        raise SystemExit("no system runs on the selected backends")
    return specs


def disk_bytes(spec: SystemSpec, where: str) -> int:
    """Bytes the system's database occupies (see the module docstring)."""
    if spec.backend == "postgres":
        return pg_table_bytes(where)
    return sqlite_bytes(Path(where))


def empty_sizes(
    specs: Sequence[SystemSpec], pg: PgServer | None, data_dir: Path, console: Console
) -> dict[tuple[str, str], int]:
    """Bytes of each system's freshly initialised, empty database after close (not timed): what
    the bytes-above-empty column subtracts. A system that fails to open is left out."""
    sizes = {}
    for spec in specs:
        try:
            with scratch_location(spec.backend, pg, data_dir, f"{spec.name}_{spec.backend}_empty") as where:
                spec.factory(where).close()
                sizes[spec.name, spec.backend] = disk_bytes(spec, where)
        except Exception as exc:  # reported with the system's own runs, which fail the same way
            console.print(f"[red]{spec.backend} {spec.name}: empty database FAILED: {type(exc).__name__}: {exc}[/red]")
    return sizes


def _check(loaded: Loaded, item: Item, what: str) -> None:
    step, state = loaded
    differing = [key for key, value in item.record.items() if step.get(key) != value]
    if differing:
        raise VerificationError(f"{what}: step fields differ from the input: {differing}")
    if state != item.state:
        raise VerificationError(f"{what}: game state differs from the input")


def verify(
    system: System,
    expected: dict[tuple[str, int], Item],
    tids: Sequence[str],
    steps: int,
    picks: Sequence[tuple[str, int]],
) -> int:
    """Compare a sample of what the system stored with the input; returns the number of checks.

    Every trajectory's latest checkpoint, two whole trajectories and the first
    :data:`VERIFIED_PICKS` state picks, step records and states compared for equality.
    """
    checks = 0
    for tid in tids:
        _check(system.resume(tid), expected[tid, steps - 1], f"resume {tid}")
        checks += 1
    for tid in dict.fromkeys((tids[0], tids[-1])):
        loaded = system.load_trajectory(tid)
        if len(loaded) != steps:
            raise VerificationError(f"load_trajectory {tid}: {len(loaded)} checkpoints, expected {steps}")
        for number, pair in enumerate(loaded):
            _check(pair, expected[tid, number], f"load_trajectory {tid} step {number}")
            checks += 1
    for tid, number in picks[:VERIFIED_PICKS]:
        if system.load_state(tid, number) != expected[tid, number].state:
            raise VerificationError(f"load_state {tid} step {number}: differs from the input")
        checks += 1
    return checks


def run_once(
    spec: SystemSpec,
    result: RunResult,
    items: Sequence[Item],
    expected: dict[tuple[str, int], Item],
    tids: Sequence[str],
    steps: int,
    picks: Sequence[tuple[str, int]],
    where: str,
    pause_gc: bool,
) -> None:
    """Open the system on ``where``, time its writes and reads, verify, fill ``result``.
    ``pause_gc``: keep the cyclic garbage collector paused in the timed phases (:func:`gc_paused`)."""
    system = spec.factory(where)
    try:
        result.durability = system.durability()
        with gc_paused(pause_gc):
            start = time.perf_counter()
            system.write(items)
            result.write_s = time.perf_counter() - start
        result.steps_per_s = len(items) / result.write_s
        result.bytes_open = disk_bytes(spec, where)
        result.checks = verify(system, expected, tids, steps, picks)

        with gc_paused(pause_gc):
            for tid in tids:
                ms, (step, _state) = timed_ms(system.resume, tid)
                if step.get("step_number") != steps - 1:
                    raise VerificationError(f"resume {tid}: got step {step.get('step_number')}, expected {steps - 1}")
                result.resume_ms.append(ms)
        with gc_paused(pause_gc):
            for tid in tids:
                ms, loaded = timed_ms(system.load_trajectory, tid)
                if len(loaded) != steps:
                    raise VerificationError(f"load_trajectory {tid}: {len(loaded)} checkpoints, expected {steps}")
                del loaded
                result.load_trajectory_ms.append(ms)
        with gc_paused(pause_gc):
            for tid, number in picks:
                ms, state = timed_ms(system.load_state, tid, number)
                if state.get("timestamp") != expected[tid, number].state["timestamp"]:
                    raise VerificationError(f"load_state {tid} step {number}: wrong state")
                result.any_state_ms.append(ms)
    finally:
        system.close()
    result.bytes_closed = disk_bytes(spec, where)


def summarise(
    results: Sequence[RunResult],
    specs: Sequence[SystemSpec],
    raw_bytes: int,
    empty: dict[tuple[str, str], int],
    floors: Sequence[FloorResult],
) -> list[dict[str, Any]]:
    """One summary row per system and backend, with fle-db's ratios and the ratio to the commit
    floor computed per repeat (each run against the floor measured right before it)."""
    floor = {(f.system, f.backend, f.repeat): f.commit_s for f in floors if f.error is None}
    rows = []
    for spec in specs:
        mine = [r for r in results if r.system == spec.name and r.backend == spec.backend]
        ok = [r for r in mine if r.error is None]
        fle = {r.repeat: r for r in results if r.system == "fle-db" and r.backend == spec.backend and r.error is None}
        paired = [(fle[r.repeat], r) for r in ok if r.repeat in fle]
        any_state = [ms for r in ok for ms in r.any_state_ms]
        closed = median([r.bytes_closed for r in ok])
        empty_bytes = empty.get((spec.name, spec.backend))
        rows.append(
            {
                "system": spec.name,
                "backend": spec.backend,
                "bulk": spec.bulk,
                "durability": ok[0].durability if ok else "",
                "runs": len(ok),
                "errors": [r.error for r in mine if r.error],
                "steps_per_s": [r.steps_per_s for r in ok],
                "resume_ms": median([ms for r in ok for ms in r.resume_ms]),
                "load_trajectory_ms": median([ms for r in ok for ms in r.load_trajectory_ms]),
                "any_state_ms": median(any_state),
                "any_state_max_ms": max(any_state) if any_state else float("nan"),
                "bytes_open": median([r.bytes_open for r in ok]),
                "bytes_closed": closed,
                "pct_raw_json": 100.0 * closed / raw_bytes,
                "empty_bytes": empty_bytes,
                "pct_raw_json_added": math.nan if empty_bytes is None else 100.0 * (closed - empty_bytes) / raw_bytes,
                "floor_ratio": [
                    (1.0 / r.steps_per_s) / floor[key] for r in ok if (key := (r.system, r.backend, r.repeat)) in floor
                ],
                "fle_write_ratio": [f.steps_per_s / r.steps_per_s for f, r in paired],
                "fle_size_ratio": [f.bytes_closed / r.bytes_closed for f, r in paired if r.bytes_closed],
            }
        )
    return rows


def floor_summary(floors: Sequence[FloorResult], backend: str) -> str:
    """``commit floor 0.123 ms median (min-max) = 8,130 commits/s`` over the backend's measurements."""
    times = [f.commit_s * 1000.0 for f in floors if f.backend == backend and f.error is None]
    if not times:
        return "commit floor FAILED"
    spread = f" ({min(times):.3f}-{max(times):.3f})" if len(times) > 1 else ""
    return f"commit floor {median(times):.3f} ms{spread} = {1000.0 / median(times):,.0f} commits/s"


def print_tables(
    console: Console,
    rows: Sequence[dict[str, Any]],
    backends: Sequence[str],
    n_items: int,
    floors: Sequence[FloorResult],
) -> None:
    """One table per backend, titled with its commit floor."""
    for backend in backends:
        mine = [row for row in rows if row["backend"] == backend]
        if not mine:
            continue
        disk = "MB on disk\nopen / closed" if backend == "sqlite" else "MB on disk\n(tables)"
        table = Table(
            title=f"{backend}: {n_items} checkpoints, round-robin; {floor_summary(floors, backend)}",
            title_justify="left",
        )
        columns: tuple[tuple[str, JustifyMethod], ...] = (
            ("System", "left"),
            ("Durability", "left"),
            ("Write steps/s\nmedian (min-max)", "right"),
            ("fle-db ÷ this\nwrite speed", "right"),
            ("per checkpoint\n÷ commit floor", "right"),
            ("Resume\nms", "right"),
            ("Load traj\nms", "right"),
            ("Any state ms\nmedian / max", "right"),
            (disk, "right"),
            ("% raw\nJSON", "right"),
            ("% raw JSON\nabove empty", "right"),
            ("fle-db ÷ this\nsize", "right"),
        )
        for header, justify in columns:
            table.add_column(header, justify=justify)
        for row in mine:
            name = row["system"] + (" (bulk)" if row["bulk"] else "")
            if not row["runs"]:
                table.add_row(name, "[red]FAILED[/red]", *["-"] * 10)
                continue
            is_fle = row["system"] == "fle-db"
            size = (
                f"{mb(row['bytes_open'])} / {mb(row['bytes_closed'])}"
                if backend == "sqlite"
                else mb(row["bytes_closed"])
            )
            table.add_row(
                name,
                row["durability"],
                fmt_rate(row["steps_per_s"]),
                "-" if is_fle else fmt_ratio(row["fle_write_ratio"]),
                fmt_ratio(row["floor_ratio"]),
                fmt_ms(row["resume_ms"]),
                fmt_ms(row["load_trajectory_ms"]),
                f"{fmt_ms(row['any_state_ms'])} / {fmt_ms(row['any_state_max_ms'])}",
                size,
                f"{row['pct_raw_json']:.1f}",
                "-" if row["empty_bytes"] is None else f"{row['pct_raw_json_added']:.2f}",
                "-" if is_fle else fmt_ratio(row["fle_size_ratio"]),
            )
        console.print(table)


def run_floor(console: Console, spec: SystemSpec, pg: PgServer | None, data_dir: Path, repeat: int) -> FloorResult:
    """Measure the commit floor of ``spec``'s backend in a fresh database, right before its run
    (see :func:`benchmarks.systems.commit_floor`): both see the same load on the machine."""
    floor = FloorResult(spec.name, spec.backend, repeat)
    try:
        with scratch_location(spec.backend, pg, data_dir, f"floor_{spec.name}_{spec.backend}_r{repeat}") as where:
            floor.commit_s, floor.durability = commit_floor(spec.backend, where, FLOOR_COMMITS)
    except Exception as exc:  # the systems' results stand without it
        floor.error = f"{type(exc).__name__}: {exc}"
        console.print(f"[red]repeat {repeat + 1} {spec.backend} commit floor FAILED: {floor.error}[/red]")
    return floor


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 if any run failed)."""
    args = parse_args(argv)
    console = make_console()
    specs = select_specs(args.backends, args.systems)
    backends = list(dict.fromkeys(spec.backend for spec in specs))
    pg = PgServer(args.pg_url) if "postgres" in backends else None
    own_dir = args.dir is None
    data_dir: Path = Path(tempfile.mkdtemp(prefix="fle_bench_")) if own_dir else args.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        facts = machine_facts(pg, data_dir)
        print_machine(console, facts)

        console.print(f"Generating {args.trajectories} x {args.steps} checkpoints (seed {args.seed}; not timed) ...")
        items = generate_round_robin(args.trajectories, args.steps, args.seed)
        step_bytes, state_bytes = raw_json_bytes(items)
        raw_bytes = step_bytes + state_bytes
        expected = {(item.tid, item.step): item for item in items}
        tids = [trajectory_id(index) for index in range(args.trajectories)]
        rng = random.Random(args.seed)
        picks = [(rng.choice(tids), rng.randrange(args.steps)) for _ in range(STATE_PICKS)]
        gc.collect()
        gc.freeze()  # the pre-generated data is never garbage: keep the cyclic GC from rescanning it
        console.print(
            f"Raw JSON (orjson) per run: steps {mb(step_bytes)} MB + states {mb(state_bytes)} MB = {mb(raw_bytes)} MB"
        )

        empty = empty_sizes(specs, pg, data_dir, console)
        results: list[RunResult] = []
        floors: list[FloorResult] = []
        for repeat in range(args.repeat):
            for position, spec in enumerate(rotated(specs, repeat)):
                floors.append(floor := run_floor(console, spec, pg, data_dir, repeat))
                result = RunResult(spec.name, spec.backend, repeat, position, spec.bulk)
                label = f"{spec.name}_{spec.backend}_r{repeat}"
                try:
                    with scratch_location(spec.backend, pg, data_dir, label) as where:
                        run_once(spec, result, items, expected, tids, args.steps, picks, where, not args.keep_gc)
                    console.print(
                        f"[dim]repeat {repeat + 1}/{args.repeat} #{position + 1} {spec.backend:8} {spec.name:18} "
                        f"{result.steps_per_s:8,.0f} steps/s  resume {fmt_ms(median(result.resume_ms))} ms  "
                        f"{result.checks} reads verified  (commit floor {floor.commit_s * 1000:.3f} ms)[/dim]"
                    )
                except Exception as exc:  # one broken system must not hide the others' results
                    result.error = f"{type(exc).__name__}: {exc}"
                    console.print(f"[red]repeat {repeat + 1} {spec.backend} {spec.name} FAILED: {result.error}[/red]")
                results.append(result)

        rows = summarise(results, specs, raw_bytes, empty, floors)
        print_tables(console, rows, backends, len(items), floors)
        console.print(
            "Write = checkpoints / wall time of the write loop (serialisation included). Read columns: medians "
            f"over all repeats' samples (resume and load-traj: every trajectory; any state: {STATE_PICKS} picks). "
            "Ratios: fle-db ÷ baseline within the same repeat, median (min-max) over repeats; write ratio > 1 "
            "means fle-db writes faster, size ratio < 1 means fle-db is smaller. Per checkpoint ÷ commit floor: the "
            "system's time per checkpoint over the time of one smallest durable transaction of the same repeat, "
            f"median (min-max); commit floor = {FLOOR_COMMITS} autocommit UPDATEs of one integer, same durability, "
            "measured right before each system's run. "
            "% raw JSON above empty: (closed size - size of the system's empty database) / raw JSON. "
            "(bulk) = not durable per checkpoint. "
            + ("Cyclic GC left running (--keep-gc)." if args.keep_gc else "Cyclic GC paused in timed phases.")
        )
        note_source_change(console, facts)
        elapsed = time.perf_counter() - started
        console.print(f"Wall time {elapsed:.1f} s")
        for row in rows:
            for error in row["errors"]:
                console.print(f"[red]{row['backend']} {row['system']}: {error}[/red]")
        write_json(
            console,
            args,
            "run",
            facts,
            elapsed,
            raw_json_bytes={"steps": step_bytes, "states": state_bytes},
            runs=[asdict(r) for r in results],
            commit_floor=[asdict(f) for f in floors],
            empty_bytes={f"{name}/{backend}": size for (name, backend), size in empty.items()},
            summary=rows,
        )
        return 1 if any(r.error for r in results) or any(f.error for f in floors) else 0
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
