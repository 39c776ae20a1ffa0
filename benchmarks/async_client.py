"""The asyncio client's checkpoint throughput beside the synchronous client's (issue 14 item 5).

For every backend and N in ``--tasks`` (default 1 and 64), N writers save FLE-like checkpoints
(``fle_db.workload``, as ``benchmarks.run``: step, agent output, feedback, ~50 KB game state),
each into a trajectory of its own, one durable transaction per checkpoint, through one client:

* ``sync``: ``DatabaseClient``, N threads sharing it (N = 1: the calling thread);
* ``async``: ``AsyncDatabaseClient``, N tasks on one event loop sharing it.

Both clients keep their defaults (``max_connections=10``). Every run gets a fresh database and
a freshly opened client (untimed); **throughput** = checkpoints / wall time of the saves. The two
clients alternate within each repeat, in an order rotated every repeat; the table gives medians
with (min-max), and async / sync paired within each repeat. Goals: at least 0.95 for one task,
above 1 for 64. Also reported: the process's CPU time per checkpoint (all threads), steadier than
wall time on a shared machine, where the commits' fsyncs queue behind other work. The
pre-generated checkpoints are frozen out of the garbage collector, so a full collection does not
rescan them during a timed run (it would for either client).

Usage: ``python -m benchmarks.async_client [--backends sqlite,postgres] [--tasks 1,64]
[--checkpoints 192] [--repeat 3] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/async_client.py``: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.table import Table

from benchmarks.common import (
    BACKENDS,
    DEFAULT_PG_URL,
    Item,
    PgServer,
    fmt_rate,
    fmt_ratio,
    generate_round_robin,
    machine_facts,
    make_console,
    median,
    print_machine,
    rotated,
    scratch_location,
    write_json,
)
from fle_db import AsyncDatabaseClient, DatabaseClient

CLIENTS = ("sync", "async")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument("--tasks", default="1,64", help="comma-separated numbers of concurrent writers")
    parser.add_argument("--checkpoints", type=int, default=192, help="checkpoints per run (default 192)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for scratch databases")
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the SQLite files (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    return parser.parse_args(argv)


def _per_writer(items: Sequence[Item], writers: int) -> list[list[Item]]:
    """Writer ``w`` saves trajectory ``w``'s checkpoints in step order."""
    lanes: dict[str, list[Item]] = {}
    for item in items:
        lanes.setdefault(item.tid, []).append(item)
    return list(lanes.values())[:writers]


def _save(db: DatabaseClient, item: Item) -> None:
    db.save_step(item.record, agent_output=item.agent_output,
                 environment_feedback=item.environment_feedback, game_state=item.state)  # fmt: skip


def run_sync(url: str, lanes: list[list[Item]]) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of the lanes through one DatabaseClient, one thread per lane (one:
    this thread); CPU is the whole process's (every thread)."""
    with DatabaseClient(url) as db:
        if len(lanes) == 1:
            started, cpu = time.perf_counter(), time.process_time()
            for item in lanes[0]:
                _save(db, item)
            return time.perf_counter() - started, time.process_time() - cpu
        barrier = threading.Barrier(len(lanes) + 1)
        errors: list[BaseException] = []

        def writer(lane: list[Item]) -> None:
            barrier.wait()
            try:
                for item in lane:
                    _save(db, item)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(lane,)) for lane in lanes]
        for thread in threads:
            thread.start()
        barrier.wait()
        started, cpu = time.perf_counter(), time.process_time()
        for thread in threads:
            thread.join()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        if errors:
            raise errors[0]
        return elapsed, cpu


def run_async(url: str, lanes: list[list[Item]]) -> tuple[float, float]:
    """``(wall, CPU)`` seconds of the lanes through one AsyncDatabaseClient, one task per lane."""

    async def main() -> tuple[float, float]:
        async with AsyncDatabaseClient(url) as db:

            async def writer(lane: list[Item]) -> None:
                for item in lane:
                    await db.save_step(
                        item.record,
                        agent_output=item.agent_output,
                        environment_feedback=item.environment_feedback,
                        game_state=item.state,
                    )

            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(writer(lane) for lane in lanes))
            return time.perf_counter() - started, time.process_time() - cpu

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = make_console()
    backends = [b for b in args.backends.split(",") if b]
    counts = [int(n) for n in args.tasks.split(",") if n]
    pg = PgServer(args.pg_url) if "postgres" in backends else None
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="fle-async-bench-"))
    facts = machine_facts(pg, data_dir)
    print_machine(console, facts)
    began = time.perf_counter()
    workloads = {}
    for n in counts:
        steps = max(1, args.checkpoints // n)
        workloads[n] = _per_writer(generate_round_robin(n, steps, args.seed), n)
    gc.collect()
    gc.freeze()
    runners = {"sync": run_sync, "async": run_async}
    rates: dict[tuple[str, int, str], list[float]] = {}
    cpu_ms: dict[tuple[str, int, str], list[float]] = {}
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeat):
        for backend in backends:
            for n in counts:
                lanes = workloads[n]
                total = sum(len(lane) for lane in lanes)
                for client in rotated(CLIENTS, repeat):
                    with scratch_location(backend, pg, data_dir, f"async_{client}_{n}_{repeat}") as where:
                        url = where if "://" in where else f"sqlite:///{where}"
                        seconds, cpu = runners[client](url, lanes)
                    rate = total / seconds
                    rates.setdefault((backend, n, client), []).append(rate)
                    cpu_ms.setdefault((backend, n, client), []).append(cpu * 1000 / total)
                    runs.append({"repeat": repeat, "backend": backend, "tasks": n, "client": client,
                                 "checkpoints": total, "seconds": seconds, "cpu_seconds": cpu})  # fmt: skip
                    console.print(
                        f"repeat {repeat} {backend} N={n} {client}: {rate:,.0f} checkpoints/s, "
                        f"{cpu * 1000 / total:.2f} CPU ms each"
                    )
    table = Table(title="Checkpoints/s, median (min-max); async / sync paired per repeat", title_justify="left")
    for column in ("backend", "writers", "sync", "async", "async / sync", "goal", "CPU ms/ckpt sync / async"):
        table.add_column(column)
    summary = []
    for backend in backends:
        for n in counts:
            sync, asynchronous = rates[(backend, n, "sync")], rates[(backend, n, "async")]
            ratios = [a / s for a, s in zip(asynchronous, sync, strict=True)]
            goal = "≥ 0.95" if n == 1 else "> 1"
            met = median(ratios) >= 0.95 if n == 1 else median(ratios) > 1
            cpu = f"{median(cpu_ms[(backend, n, 'sync')]):.2f} / {median(cpu_ms[(backend, n, 'async')]):.2f}"
            table.add_row(backend, str(n), fmt_rate(sync), fmt_rate(asynchronous), fmt_ratio(ratios),
                          f"{goal}: {'met' if met else 'NOT met'}", cpu)  # fmt: skip
            summary.append({"backend": backend, "tasks": n, "sync": sync, "async": asynchronous, "ratios": ratios})
    console.print(table)
    write_json(console, args, "async_client", facts, time.perf_counter() - began, runs=runs, summary=summary)
    if args.data_dir is None:
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
