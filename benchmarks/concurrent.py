"""Many writer processes at once, each saving checkpoints of its own trajectory, one durable
transaction per checkpoint: does throughput grow with the number of agents?

For every N in ``--writers`` (default 1, 4, 16, 64) and two workloads, N writer **processes**
write at the same time into one fresh database:

* ``small`` -- ``--small-steps`` (60) steps per writer of ~300 bytes of JSON, no parts, no state;
* ``fle`` -- FLE-like checkpoints (``fle_db.workload.Workload``: step, agent output, feedback and a
  ~53 KB game state), ``--fle-steps`` (50) per writer, at most ``--fle-max-total`` (1600) per run,
  so 25 each at N = 64.

Systems (``benchmarks.systems``, the same write loops as ``benchmarks.run``): on PostgreSQL
``fle-db`` (``save_step``), ``psycopg-txn`` (raw psycopg, same rows, one pipelined transaction per
checkpoint) and ``langgraph-postgres`` (``PostgresSaver.put`` per checkpoint), plus
``fle-db-pgbouncer``: fle-db through a PgBouncer in transaction pooling mode (stock settings,
``benchmarks.pgbouncer``) at the N of ``--pgbouncer-writers`` (16); on SQLite, N processes on one
file: ``fle-db`` and ``sqlite3-txn`` (WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``).

Every run uses a fresh database, created and initialised by the parent (untimed). The writers
are forked, open their connection and wait at a barrier; the parent then gives the start signal.
**Throughput** = N x checkpoints per writer / (last writer's finish - start signal). Systems are
interleaved per N, in an order rotated every repeat. At N = ``--sample-writers`` (16), a thread
of the parent samples ``pg_stat_activity`` (wait event type, wait event and state of the run's
backends) every 20 ms from its own connection, and the histogram shows where the writers wait:
a lock every writer needs shows up as ``Lock`` waits shared by all of them.

Reported per backend, workload and N: each system's throughput, fle-db ÷ each baseline (paired
within a repeat), the scaling test fle(N)/fle(1) >= 0.9 x raw(N)/raw(1) (from the medians), and
fle-db through PgBouncer ÷ direct. Each writer's last checkpoint is read back and compared.

``--tail``: a live tail (``DatabaseClient.tail``) in a thread of the parent follows fle-db's
writes (its sessions then appear in the ``pg_stat_activity`` histogram too); each run line adds
the steps it saw and the slowest from commit to yield. Compare the throughput and the ``Lock``
waits with and without it: what following the writers costs them.

Usage: ``python -m benchmarks.concurrent [--writers 1,4,16,64] [--workloads small,fle]
[--backends sqlite,postgres] [--systems ...] [--repeat 3] [--tail] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import queue
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as ``python benchmarks/concurrent.py``: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from rich.console import Console
from rich.table import Table

from benchmarks import pgbouncer
from benchmarks.common import (
    BACKENDS,
    DEFAULT_PG_URL,
    Item,
    PgServer,
    fmt_rate,
    fmt_ratio,
    gc_paused,
    machine_facts,
    make_console,
    median,
    note_source_change,
    print_machine,
    rotated,
    scalar,
    scratch_location,
    small_step,
    write_json,
)
from benchmarks.systems import SPECS, SystemSpec
from fle_db.workload import Workload

WORKLOADS = ("small", "fle")
#: The systems compared per backend; the first is fle-db, the second the raw driver.
SYSTEMS = {"postgres": ("fle-db", "psycopg-txn", "langgraph-postgres"), "sqlite": ("fle-db", "sqlite3-txn")}
#: fle-db on PostgreSQL through PgBouncer (transaction pooling).
PGBOUNCER = "fle-db-pgbouncer"
SYSTEM_NAMES = (*dict.fromkeys(name for names in SYSTEMS.values() for name in names), PGBOUNCER)
#: pg_stat_activity sampling period.
SAMPLE_EVERY_S = 0.02
#: How long writers may take to open their connections, and to finish writing.
SETUP_TIMEOUT_S = 300.0
RUN_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Job:
    """A system on one backend, direct or through PgBouncer."""

    spec: SystemSpec
    via_pgbouncer: bool = False

    @property
    def name(self) -> str:
        return PGBOUNCER if self.via_pgbouncer else self.spec.name


@dataclass
class Result:
    """One system, backend, workload and N in one repeat."""

    system: str
    backend: str
    workload: str
    writers: int
    per_writer: int
    repeat: int
    position: int
    wall_s: float = math.nan
    per_s: float = math.nan
    setup_s: float = math.nan  # forking and opening the writers' connections (not timed)
    samples: int = 0  # pg_stat_activity samples taken (0: not sampled)
    waits: dict[str, int] = field(default_factory=dict)  # "state: type/event" -> backend-samples
    tailed: int | None = None  # steps a live tail in the parent yielded (--tail, fle-db only)
    tail_lag_s: float = math.nan  # the slowest of them, from its commit's instant to its yield
    error: str | None = None


# -- workloads ------------------------------------------------------------------------------
def writer_tid(writer: int) -> str:
    """The trajectory id of writer ``writer``."""
    return f"writer-{writer:03d}"


def small_item(tid: str, number: int, rng: random.Random) -> Item:
    """A ~300-byte step without parts or state: :func:`benchmarks.common.small_step` plus a line
    of agent code."""
    x, y, quantity = rng.randrange(-200, 200), rng.randrange(-200, 200), rng.randrange(1, 100)
    record = {
        **small_step(tid, number, rng),
        "code": f"drill = place_entity(Prototype.BurnerMiningDrill, position=Position(x={x}, y={y}))\n"
        f"harvest_resource(nearest(Resource.IronOre), quantity={quantity})",
    }
    return Item(tid, number, record, None, None, None)


def per_writer(workload: str, writers: int, args: argparse.Namespace) -> int:
    """Checkpoints each writer saves in one run."""
    if workload == "small":
        return int(args.small_steps)
    return int(min(args.fle_steps, max(1, args.fle_max_total // writers)))


def generate(workload: str, counts: dict[int, int], seed: int) -> list[list[Item]]:
    """``items[w]``: the first ``counts[w]`` checkpoints of writer ``w``'s trajectory."""
    fle = Workload(seed, cache_trajectories=1)
    items = []
    for writer in range(len(counts)):
        tid = writer_tid(writer)
        if workload == "small":
            rng = random.Random(seed * 100_003 + writer)
            items.append([small_item(tid, number, rng) for number in range(counts[writer])])
            continue
        mine = []
        for number in range(counts[writer]):
            cp = fle.checkpoint(writer, number, tid)
            mine.append(Item(tid, number, cp["step"], cp["agent_output"], cp["environment_feedback"], cp["game_state"]))
        items.append(mine)
    return items


# -- writers --------------------------------------------------------------------------------
def _writer(job: Job, location: str, writer: int, items: Sequence[Item], ready: Any, start: Any, out: Any) -> None:
    """One writer process: open the system, wait for the start signal, write, report the
    monotonic finish time (or the error). Puts exactly one ``(writer, finish, error)``."""
    try:
        system = job.spec.factory(location, create=False)
    except BaseException as exc:
        out.put((writer, math.nan, f"open: {type(exc).__name__}: {exc}"))
        ready.abort()
        return
    try:
        ready.wait(timeout=SETUP_TIMEOUT_S)
        start.wait()
        with gc_paused():
            system.write(items)
            finished = time.monotonic()
        out.put((writer, finished, None))
    except BaseException as exc:
        out.put((writer, math.nan, f"{type(exc).__name__}: {exc}"))
    finally:
        system.close()


class WaitSampler:
    """Samples ``pg_stat_activity`` of one database every :data:`SAMPLE_EVERY_S` from its own
    connection, in a thread, counting each client backend's ``state: wait type/wait event``."""

    QUERY = (
        "SELECT coalesce(state, '-'), coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '-') "
        "FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )

    def __init__(self, admin_url: str, database: str) -> None:
        self.database = database
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self._conn = psycopg.connect(admin_url, autocommit=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pg_stat_activity sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for state, kind, event in self._conn.execute(self.QUERY, (self.database,)).fetchall():
                self.counts[f"{state}: {kind}/{event}"] += 1
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY_S)

    def stop(self) -> None:
        """Stop sampling and close the connection."""
        self._stop.set()
        self._thread.join()
        self._conn.close()


class LiveTail:
    """``DatabaseClient.tail`` in a thread of the parent, from before the writers start until it
    has seen ``expected`` steps (or 10 s without one): what following the writes costs them."""

    def __init__(self, url: str, expected: int) -> None:
        from fle_db import DatabaseClient
        from fle_db.config import database_url
        from fle_db.instants import parse_instant

        self.expected, self.seen, self.lag = expected, 0, 0.0
        self._client = DatabaseClient(database_url(url), backup_interval=0, auto_migrate=False)
        self._tail = self._client.tail(timeout=10)

        def follow() -> None:
            for item in self._tail:
                self.lag = max(self.lag, time.time() - parse_instant(item["committed_at"]) / 1e6)
                self.seen += 1
                if self.seen >= expected:
                    return

        self._thread = threading.Thread(target=follow, name="live tail", daemon=True)
        self._thread.start()

    def finish(self) -> tuple[int, float]:
        """Wait for the tail (at most 10 s after its last step); (steps seen, slowest lag in s)."""
        self._thread.join(timeout=30)
        self._tail.close()
        self._client.close()
        return self.seen, self.lag


def free_connections(pg: PgServer) -> int:
    """Connections the server still accepts from ordinary users."""
    query = (
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
    )
    with psycopg.connect(pg.admin_url) as conn:
        return int(scalar(conn, query))


def verify(job: Job, where: str, items: Sequence[Sequence[Item]]) -> None:
    """Every writer's last checkpoint, read back directly, equals the input."""
    system = job.spec.factory(where, create=False)
    try:
        for mine in items:
            last = mine[-1]
            step, state = system.resume(last.tid)
            differing = [key for key, value in last.record.items() if step.get(key) != value]
            if differing or state != last.state:
                raise AssertionError(f"{last.tid}: the last checkpoint differs from the input ({differing or 'state'})")
    finally:
        system.close()


def run_job(
    job: Job,
    result: Result,
    items: Sequence[Sequence[Item]],
    where: str,
    bouncer: pgbouncer.PgBouncer | None,
    pg: PgServer | None,
    sample: bool,
    tail: bool = False,
) -> None:
    """Prepare the fresh database ``where``, fork the writers, time them, verify; fills ``result``.
    ``sample``: sample ``pg_stat_activity`` of ``where`` (a PostgreSQL URL) during the writes.
    ``tail``: a live tail (``DatabaseClient.tail``) follows the writes from the parent."""
    job.spec.factory(where).close()  # schema and migrations, untimed
    follower = LiveTail(where, sum(len(mine) for mine in items)) if tail and job.spec.name == "fle-db" else None
    location = bouncer.url(where) if bouncer is not None and job.via_pgbouncer else where
    ctx = mp.get_context("fork")  # the writers inherit the pre-generated items
    ready, start, out = ctx.Barrier(len(items) + 1), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(job, location, writer, mine, ready, start, out), daemon=True)
        for writer, mine in enumerate(items)
    ]
    sampler: WaitSampler | None = None
    outcomes: list[tuple[int, float, str | None]] = []
    began = time.monotonic()
    for proc in procs:
        proc.start()
    try:
        try:
            ready.wait(timeout=SETUP_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass  # a writer failed to open: every writer reports why below
        result.setup_s = time.monotonic() - began
        if sample and pg is not None and not ready.broken:
            sampler = WaitSampler(pg.admin_url, urlsplit(where).path.lstrip("/"))
        started = time.monotonic()
        start.set()
        for _ in procs:
            try:
                outcomes.append(out.get(timeout=RUN_TIMEOUT_S))
            except queue.Empty:
                outcomes.append((-1, math.nan, "a writer process died without reporting"))
                break
    finally:
        if sampler is not None:
            sampler.stop()
            result.samples, result.waits = sampler.samples, dict(sampler.counts.most_common())
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    if follower is not None:
        result.tailed, result.tail_lag_s = follower.finish()
    errors = sorted({error for _, _, error in outcomes if error})
    if errors:
        raise RuntimeError(f"{len(errors)} distinct writer error(s): {'; '.join(errors[:3])}")
    result.wall_s = max(finished for _, finished, _ in outcomes) - started
    result.per_s = sum(len(mine) for mine in items) / result.wall_s
    verify(job, where, items)


# -- summary --------------------------------------------------------------------------------
def summarise(results: Sequence[Result]) -> list[dict[str, Any]]:
    """One row per backend, workload and N: throughputs, paired ratios and the scaling test."""
    rows = []
    keys = dict.fromkeys((r.backend, r.workload, r.writers) for r in results)
    for backend, workload, writers in keys:
        mine = [r for r in results if (r.backend, r.workload, r.writers) == (backend, workload, writers)]
        ok = [r for r in mine if r.error is None]
        rates = {name: [r.per_s for r in ok if r.system == name] for name in dict.fromkeys(r.system for r in mine)}
        by_repeat = {(r.system, r.repeat): r.per_s for r in ok}

        names = SYSTEMS[backend]
        rows.append(
            {
                "backend": backend,
                "workload": workload,
                "writers": writers,
                "per_writer": mine[0].per_writer,
                "rates": rates,
                "errors": {r.system: r.error for r in mine if r.error},
                "fle_ratio": {other: _paired(by_repeat, "fle-db", other) for other in names[1:]},
                "pgbouncer_ratio": _paired(by_repeat, PGBOUNCER, "fle-db"),
            }
        )
    for row in rows:
        base = next(
            (r for r in rows if (r["backend"], r["workload"], r["writers"]) == (row["backend"], row["workload"], 1)),
            None,
        )
        fle, raw = SYSTEMS[row["backend"]][:2]
        row["fle_scaling"] = _scaling(row, base, fle)
        row["raw_scaling"] = _scaling(row, base, raw)
        row["scales"] = (
            None
            if math.isnan(row["fle_scaling"]) or math.isnan(row["raw_scaling"])
            else row["fle_scaling"] >= 0.9 * row["raw_scaling"]
        )
    return rows


def _paired(by_repeat: dict[tuple[str, int], float], a: str, b: str) -> list[float]:
    """``a``'s rate / ``b``'s rate in every repeat that has both."""
    repeats = sorted({rep for _, rep in by_repeat})
    return [by_repeat[a, rep] / by_repeat[b, rep] for rep in repeats if (a, rep) in by_repeat and (b, rep) in by_repeat]


def _scaling(row: dict[str, Any], base: dict[str, Any] | None, system: str) -> float:
    """median rate at this N / median rate at N = 1 (NaN without both)."""
    if base is None or not row["rates"].get(system) or not base["rates"].get(system):
        return math.nan
    return float(median(row["rates"][system]) / median(base["rates"][system]))


def print_tables(console: Console, rows: Sequence[dict[str, Any]]) -> None:
    """One table per backend and workload, one row per N."""
    for backend, workload in dict.fromkeys((row["backend"], row["workload"]) for row in rows):
        mine = [row for row in rows if (row["backend"], row["workload"]) == (backend, workload)]
        names = SYSTEMS[backend]
        bouncer = any(row["rates"].get(PGBOUNCER) or PGBOUNCER in row["errors"] for row in mine)
        table = Table(title=f"{backend}, {workload} checkpoints: N writer processes", title_justify="left")
        table.add_column("N", justify="right")
        table.add_column("per\nwriter", justify="right")
        for name in names:
            table.add_column(f"{name}\ncheckpoints/s", justify="right")
        for name in names[1:]:
            table.add_column(f"fle-db ÷\n{name}", justify="right")
        table.add_column("fle(N)/fle(1)", justify="right")
        table.add_column(f"0.9 x\n{names[1]}(N)/(1)", justify="right")
        table.add_column("scales\nlike raw", justify="center")
        if bouncer:
            table.add_column("fle-db via\nPgBouncer /s", justify="right")
            table.add_column("PgBouncer\n÷ direct", justify="right")
        for row in mine:
            cells = [str(row["writers"]), str(row["per_writer"])]
            cells += [
                "[red]FAILED[/red]" if name in row["errors"] else fmt_rate(row["rates"].get(name, [])) for name in names
            ]
            cells += [fmt_ratio(row["fle_ratio"][name]) for name in names[1:]]
            cells += [_fmt(row["fle_scaling"]), _fmt(0.9 * row["raw_scaling"])]
            cells.append("-" if row["scales"] is None else "yes" if row["scales"] else "[red]no[/red]")
            if bouncer:
                failed = PGBOUNCER in row["errors"]
                cells.append("[red]FAILED[/red]" if failed else fmt_rate(row["rates"].get(PGBOUNCER, [])))
                cells.append(fmt_ratio(row["pgbouncer_ratio"]))
            table.add_row(*cells)
        console.print(table)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def print_waits(console: Console, results: Sequence[Result], top: int = 10) -> None:
    """Per workload and N sampled: share of backend-samples per ``state: wait type/event`` and system."""
    sampled = [r for r in results if r.samples and r.error is None]
    for workload, writers in dict.fromkeys((r.workload, r.writers) for r in sampled):
        mine = [r for r in sampled if (r.workload, r.writers) == (workload, writers)]
        systems = list(dict.fromkeys(r.system for r in mine))
        totals: dict[str, Counter[str]] = {name: Counter() for name in systems}
        for r in mine:
            totals[r.system].update(r.waits)
        order = Counter[str]()
        for counts in totals.values():
            whole = sum(counts.values()) or 1
            order.update({key: count / whole for key, count in counts.items()})
        table = Table(
            title=f"pg_stat_activity during the {workload} runs at N={writers}: share of backend-samples "
            f"(every {SAMPLE_EVERY_S * 1000:.0f} ms, all repeats)",
            title_justify="left",
        )
        table.add_column("state: wait type/event")
        for name in systems:
            table.add_column(f"{name}\n({sum(r.samples for r in mine if r.system == name)} samples)", justify="right")
        for key, _ in order.most_common(top):
            cells = [key]
            for name in systems:
                whole = sum(totals[name].values())
                cells.append(f"{100.0 * totals[name][key] / whole:.1f} %" if whole and totals[name][key] else "-")
            table.add_row(*cells)
        lock_row = ["all Lock waits"]
        for name in systems:
            whole = sum(totals[name].values())
            locks = sum(count for key, count in totals[name].items() if ": Lock/" in key)
            lock_row.append(f"{100.0 * locks / whole:.1f} %" if whole else "-")
        table.add_row(*lock_row, style="bold")
        console.print(table)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writers", default="1,4,16,64", help="comma-separated N (default 1,4,16,64)")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: small,fle")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument(
        "--systems", default=",".join(SYSTEM_NAMES), help=f"comma-separated of: {','.join(SYSTEM_NAMES)}"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs of every configuration (default 3)")
    parser.add_argument("--small-steps", type=int, default=60, help="small steps per writer (default 60)")
    parser.add_argument("--fle-steps", type=int, default=50, help="FLE-like checkpoints per writer (default 50)")
    parser.add_argument("--fle-max-total", type=int, default=1600, help="cap on FLE-like checkpoints per run (1600)")
    parser.add_argument("--pgbouncer-writers", default="16", help="N at which fle-db also runs through PgBouncer")
    parser.add_argument("--sample-writers", default="16", help="N at which pg_stat_activity is sampled")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for scratch databases")
    parser.add_argument("--dir", type=Path, default=None, help="directory for SQLite files (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results to this JSON file")
    parser.add_argument(
        "--tail",
        action="store_true",
        help="follow fle-db's writes with a live tail (DatabaseClient.tail) in the parent",
    )
    args = parser.parse_args(argv)
    args.writers = _ints(parser, args.writers, "--writers")
    args.pgbouncer_writers = _ints(parser, args.pgbouncer_writers, "--pgbouncer-writers")
    args.sample_writers = _ints(parser, args.sample_writers, "--sample-writers")
    args.workloads = _names(parser, args.workloads, WORKLOADS, "workload")
    args.backends = _names(parser, args.backends, BACKENDS, "backend")
    args.systems = _names(parser, args.systems, SYSTEM_NAMES, "system")
    if min(args.repeat, args.small_steps, args.fle_steps, args.fle_max_total) < 1 or not args.writers:
        parser.error("--repeat, --small-steps, --fle-steps, --fle-max-total and --writers must be >= 1")
    return args


def _ints(parser: argparse.ArgumentParser, text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        parser.error(f"{option}: comma-separated integers, got {text!r}")
    if any(value < 1 for value in values):
        parser.error(f"{option}: every N must be >= 1")
    return values


def _names(parser: argparse.ArgumentParser, text: str, known: Sequence[str], what: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown {what} {', '.join(unknown)}; choose from {', '.join(known)}")
    return names


def jobs_for(backend: str, writers: int, args: argparse.Namespace, bouncer: bool) -> list[Job]:
    """The jobs of one backend at N = ``writers``."""
    specs = {spec.name: spec for spec in SPECS if spec.backend == backend}
    jobs = [Job(specs[name]) for name in SYSTEMS[backend] if name in args.systems]
    if backend == "postgres" and bouncer and PGBOUNCER in args.systems and writers in args.pgbouncer_writers:
        jobs.append(Job(specs["fle-db"], via_pgbouncer=True))
    return jobs


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit status (1 if any run failed)."""
    args = parse_args(argv)
    console = make_console()
    pg = PgServer(args.pg_url) if "postgres" in args.backends else None
    own_dir = args.dir is None
    data_dir: Path = Path(tempfile.mkdtemp(prefix="fle_bench_")) if own_dir else args.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ExitStack() as stack:
        if own_dir:
            stack.callback(shutil.rmtree, data_dir, True)
        facts = machine_facts(pg, data_dir)
        print_machine(console, facts)
        bouncer = None
        wants_bouncer = pg is not None and PGBOUNCER in args.systems and args.pgbouncer_writers
        if wants_bouncer and pgbouncer.available() is None:
            bouncer = stack.enter_context(pgbouncer.PgBouncer(args.pg_url))
            console.print(f"PgBouncer {bouncer.pool_mode} pooling, pool size {bouncer.pool_size}, port {bouncer.port}")
        elif wants_bouncer:
            console.print(f"[yellow]{PGBOUNCER} skipped: {pgbouncer.available()}[/yellow]")

        console.print("Generating the workloads (not timed) ...")
        items: dict[str, list[list[Item]]] = {}
        for workload in args.workloads:
            counts = {
                w: max(per_writer(workload, n, args) for n in args.writers if w < n) for w in range(max(args.writers))
            }
            items[workload] = generate(workload, counts, args.seed)
        gc.collect()
        gc.freeze()  # the pre-generated data is never garbage (and stays shared with the forked writers)

        results: list[Result] = []
        for repeat in range(args.repeat):
            for workload in args.workloads:
                for step, writers in enumerate(args.writers):
                    count = per_writer(workload, writers, args)
                    batch = [item[:count] for item in items[workload][:writers]]
                    jobs = [
                        (backend, job)
                        for backend in args.backends
                        for job in jobs_for(backend, writers, args, bouncer is not None)
                    ]
                    for position, (backend, job) in enumerate(rotated(jobs, repeat + step)):
                        result = Result(job.name, backend, workload, writers, count, repeat, position)
                        label = f"cc_{job.name}_{backend}_{workload}_n{writers}_r{repeat}"
                        try:
                            if pg is not None and backend == "postgres" and free_connections(pg) < writers + 4:
                                raise RuntimeError(f"the server has fewer than {writers + 4} free connections")
                            with scratch_location(backend, pg, data_dir, label) as where:
                                sample = backend == "postgres" and writers in args.sample_writers
                                run_job(job, result, batch, where, bouncer, pg, sample, args.tail)
                            console.print(
                                f"[dim]repeat {repeat + 1}/{args.repeat} {backend:8} {workload:5} N={writers:<3} "
                                f"{job.name:18} {result.per_s:8,.0f} checkpoints/s  wall {result.wall_s:.2f} s  "
                                f"setup {result.setup_s:.1f} s"
                                + (
                                    f"  tail: {result.tailed} steps, slowest {result.tail_lag_s:.2f} s after commit"
                                    if result.tailed is not None
                                    else ""
                                )
                                + "[/dim]"
                            )
                        except Exception as exc:  # one broken system must not hide the others' results
                            result.error = f"{type(exc).__name__}: {exc}"
                            console.print(
                                f"[red]repeat {repeat + 1} {backend} {workload} N={writers} {job.name} FAILED: "
                                f"{result.error}[/red]"
                            )
                        results.append(result)

        rows = summarise(results)
        print_tables(console, rows)
        print_waits(console, results)
        console.print(
            "Throughput = N x checkpoints per writer / (last writer's finish - start signal); each writer a "
            "process, one durable transaction per checkpoint. checkpoints/s: median (min-max) over repeats; "
            "ratios paired within a repeat. Scaling: fle(N)/fle(1) from medians, to pass >= 0.9 x the raw "
            "driver's own. PgBouncer: stock settings but transaction pooling."
        )
        note_source_change(console, facts)
        elapsed = time.perf_counter() - started
        console.print(f"Wall time {elapsed:.1f} s")
        for result in results:
            if result.error:
                console.print(
                    f"[red]{result.backend} {result.workload} N={result.writers} {result.system}: {result.error}[/red]"
                )
        write_json(console, args, "concurrent", facts, elapsed, runs=[asdict(r) for r in results], summary=rows)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
