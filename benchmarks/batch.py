"""``batch_save_steps`` throughput of small, spec-sized steps, beside raw driver batches.

Each step is the spec's ``{'trajectory_id', 'step_number', 'action': 'action<n>'}`` plus a
reward and a short observation (~150 bytes of JSON), trajectory after trajectory. The steps are
written in batches of each ``--batch-sizes`` entry, one transaction per batch, by:

* ``fle-db`` -- ``DatabaseClient.batch_save_steps(batch)`` (SQLite ``synchronous=FULL``, PostgreSQL);
* ``sqlite3-executemany`` -- stdlib sqlite3, WAL, ``synchronous=FULL``: ``BEGIN``, ``executemany``, ``COMMIT``;
* ``psycopg-executemany`` -- psycopg 3 ``executemany`` (pipelined by psycopg), then ``COMMIT``;
* ``psycopg-copy`` -- psycopg 3 ``COPY ... FROM STDIN`` of the batch, then ``COMMIT``.

Raw baselines store ``steps(traj_id, step, data TEXT, PRIMARY KEY (traj_id, step))`` with the
orjson of the whole step. **Measured:** steps / wall time of the loop over all batches
(serialisation included; generation not). Every run writes to a fresh database; runs are
rotated across repeats; a sample of trajectories is read back and compared with the input.

Usage: ``python -m benchmarks.batch [--steps 100000] [--batch-sizes 1000,10000] [--repeat 3]
[--backends sqlite,postgres] [--systems ...] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as ``python benchmarks/batch.py``: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import psycopg
from rich.table import Table

from benchmarks.common import (
    BACKENDS,
    DEFAULT_PG_URL,
    PgServer,
    fmt_rate,
    fmt_ratio,
    gc_paused,
    machine_facts,
    make_console,
    median,
    note_source_change,
    pg_synchronous_commit,
    print_machine,
    rotated,
    scratch_location,
    small_step,
    sqlite_synchronous,
    write_json,
)
from fle_db import DatabaseClient

Row = dict[str, Any]
_INSERT_SQLITE = "INSERT INTO steps (traj_id, step, data) VALUES (?, ?, ?)"
_INSERT_PG = "INSERT INTO steps (traj_id, step, data) VALUES (%s, %s, %s)"
_DDL = (
    "CREATE TABLE steps (traj_id TEXT NOT NULL, step INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (traj_id, step))"
)
#: Trajectories read back and compared with the input after each run.
VERIFIED_TRAJECTORIES = 5


class BatchSystem(ABC):
    """A system writing batches of small steps to one fresh database."""

    @abstractmethod
    def durability(self) -> str:
        """How durable a committed batch is, as configured."""

    @abstractmethod
    def write_batch(self, rows: Sequence[Row]) -> None:
        """Store ``rows`` in one transaction (timed)."""

    @abstractmethod
    def load(self, tid: str) -> list[Row]:
        """A trajectory's steps in order, decoded (for verification)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""


class FleDbBatch(BatchSystem):
    """``DatabaseClient.batch_save_steps``: the whole batch validated, then one transaction."""

    def __init__(self, location: str) -> None:
        self._postgres = location.startswith("postgresql://")
        self._url = location
        self._db = DatabaseClient(location if self._postgres else f"sqlite:///{location}", durability="full")

    def durability(self) -> str:
        if self._postgres:
            return f"txn/batch, {pg_synchronous_commit(self._url)}"
        return f"txn/batch, WAL, durability={self._db.settings.durability} (SQLite synchronous=FULL)"

    def write_batch(self, rows: Sequence[Row]) -> None:
        self._db.batch_save_steps(rows)

    def load(self, tid: str) -> list[Row]:
        return self._db.load_steps(tid)

    def close(self) -> None:
        self._db.close()


class Sqlite3Executemany(BatchSystem):
    """stdlib sqlite3, WAL, ``synchronous=FULL``; ``executemany`` inside ``BEGIN``/``COMMIT``."""

    def __init__(self, location: str) -> None:
        self._conn = sqlite3.connect(location, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_DDL)

    def durability(self) -> str:
        return f"txn/batch, {sqlite_synchronous(self._conn)}"

    def write_batch(self, rows: Sequence[Row]) -> None:
        dumps = orjson.dumps
        params = [(row["trajectory_id"], row["step_number"], dumps(row).decode()) for row in rows]
        self._conn.execute("BEGIN")
        self._conn.executemany(_INSERT_SQLITE, params)
        self._conn.execute("COMMIT")

    def load(self, tid: str) -> list[Row]:
        rows = self._conn.execute("SELECT data FROM steps WHERE traj_id = ? ORDER BY step", (tid,)).fetchall()
        return [orjson.loads(row[0]) for row in rows]

    def close(self) -> None:
        self._conn.close()


class _PsycopgBatch(BatchSystem):
    """psycopg 3 on the ``steps`` table; subclasses differ in how a batch is sent."""

    def __init__(self, location: str) -> None:
        self._url = location
        self._conn = psycopg.connect(location)
        self._conn.execute(_DDL)
        self._conn.commit()

    def durability(self) -> str:
        return f"txn/batch, {pg_synchronous_commit(self._url)}"

    def load(self, tid: str) -> list[Row]:
        rows = self._conn.execute("SELECT data FROM steps WHERE traj_id = %s ORDER BY step", (tid,)).fetchall()
        self._conn.commit()
        return [orjson.loads(row[0]) for row in rows]

    def close(self) -> None:
        self._conn.close()


class PsycopgExecutemany(_PsycopgBatch):
    """psycopg 3 ``executemany`` (psycopg pipelines it), one ``COMMIT`` per batch."""

    def write_batch(self, rows: Sequence[Row]) -> None:
        dumps = orjson.dumps
        with self._conn.cursor() as cur:
            cur.executemany(
                _INSERT_PG, [(row["trajectory_id"], row["step_number"], dumps(row).decode()) for row in rows]
            )
        self._conn.commit()


class PsycopgCopy(_PsycopgBatch):
    """psycopg 3 ``COPY steps FROM STDIN`` of the batch, one ``COMMIT`` per batch."""

    def write_batch(self, rows: Sequence[Row]) -> None:
        dumps = orjson.dumps
        with self._conn.cursor() as cur, cur.copy("COPY steps (traj_id, step, data) FROM STDIN") as copy:
            for row in rows:
                copy.write_row((row["trajectory_id"], row["step_number"], dumps(row).decode()))
        self._conn.commit()


@dataclass(frozen=True)
class BatchSpec:
    """A batch-writing system on one backend; ``factory(location)`` opens it."""

    name: str
    backend: str
    factory: Callable[[str], BatchSystem]


SPECS: tuple[BatchSpec, ...] = (
    BatchSpec("fle-db", "sqlite", FleDbBatch),
    BatchSpec("sqlite3-executemany", "sqlite", Sqlite3Executemany),
    BatchSpec("fle-db", "postgres", FleDbBatch),
    BatchSpec("psycopg-executemany", "postgres", PsycopgExecutemany),
    BatchSpec("psycopg-copy", "postgres", PsycopgCopy),
)
SYSTEM_NAMES = tuple(dict.fromkeys(spec.name for spec in SPECS))


@dataclass
class BatchResult:
    """One system, backend and batch size in one repeat."""

    system: str
    backend: str
    batch_size: int
    repeat: int
    position: int
    durability: str = ""
    write_s: float = float("nan")
    steps_per_s: float = float("nan")
    error: str | None = None


def generate(steps: int, per_trajectory: int, seed: int) -> list[Row]:
    """``steps`` small steps, trajectory after trajectory (``per_trajectory`` steps each)."""
    rng = random.Random(seed)
    return [small_step(f"batch-{n // per_trajectory:06d}", n % per_trajectory, rng) for n in range(steps)]


def verify(system: BatchSystem, rows: Sequence[Row], per_trajectory: int, seed: int) -> None:
    """Read back :data:`VERIFIED_TRAJECTORIES` trajectories (first, last, random) and compare."""
    count = len(rows) // per_trajectory + (1 if len(rows) % per_trajectory else 0)
    rng = random.Random(seed + 1)
    for index in dict.fromkeys([0, count - 1, *(rng.randrange(count) for _ in range(VERIFIED_TRAJECTORIES - 2))]):
        expected = rows[index * per_trajectory : (index + 1) * per_trajectory]
        loaded = system.load(expected[0]["trajectory_id"])
        if len(loaded) != len(expected):
            raise AssertionError(f"trajectory {index}: {len(loaded)} steps read back, {len(expected)} written")
        for got, want in zip(loaded, expected, strict=True):
            if any(got.get(key) != value for key, value in want.items()):
                raise AssertionError(f"trajectory {index} step {want['step_number']}: differs from the input")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch benchmark; returns the exit status (1 if any run failed)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="steps written per run (default 100,000)")
    parser.add_argument("--batch-sizes", default="1000,10000", help="comma-separated (default 1000,10000)")
    parser.add_argument("--steps-per-trajectory", type=int, default=1000, help="default 1000")
    parser.add_argument("--repeat", type=int, default=3, help="fresh runs of every configuration (default 3)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgres")
    parser.add_argument(
        "--systems", default=",".join(SYSTEM_NAMES), help=f"comma-separated of: {','.join(SYSTEM_NAMES)}"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for scratch databases")
    parser.add_argument("--dir", type=Path, default=None, help="directory for SQLite files (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results to this JSON file")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.batch_sizes.split(",") if size.strip()]
    if args.steps < 1 or args.steps_per_trajectory < 1 or args.repeat < 1 or not sizes or min(sizes) < 1:
        parser.error("--steps, --steps-per-trajectory, --repeat and batch sizes must be >= 1")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [b for b in backends if b not in BACKENDS] + [s for s in systems if s not in SYSTEM_NAMES]
    if unknown:
        parser.error(f"unknown backend or system: {', '.join(unknown)}")
    specs = [spec for spec in SPECS if spec.backend in backends and spec.name in systems]
    if not specs:
        parser.error("no system runs on the selected backends")

    console = make_console()
    pg = PgServer(args.pg_url) if any(spec.backend == "postgres" for spec in specs) else None
    own_dir = args.dir is None
    data_dir: Path = Path(tempfile.mkdtemp(prefix="fle_bench_")) if own_dir else args.dir
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        facts = machine_facts(pg, data_dir)
        print_machine(console, facts)
        rows = generate(args.steps, args.steps_per_trajectory, args.seed)
        gc.collect()
        gc.freeze()  # the pre-generated rows are never garbage: keep the cyclic GC from rescanning them
        console.print(
            f"{args.steps:,} steps of ~{median([len(orjson.dumps(r)) for r in rows[:1000]]):.0f} B JSON, "
            f"{args.steps_per_trajectory} per trajectory; batch sizes {sizes}"
        )
        jobs = [(spec, size) for spec in specs for size in sizes]
        results: list[BatchResult] = []
        for repeat in range(args.repeat):
            for position, (spec, size) in enumerate(rotated(jobs, repeat)):
                result = BatchResult(spec.name, spec.backend, size, repeat, position)
                try:
                    with scratch_location(
                        spec.backend, pg, data_dir, f"batch_{spec.name}_{spec.backend}_{size}"
                    ) as where:
                        system = spec.factory(where)
                        try:
                            result.durability = system.durability()
                            with gc_paused():
                                start = time.perf_counter()
                                for offset in range(0, len(rows), size):
                                    system.write_batch(rows[offset : offset + size])
                                result.write_s = time.perf_counter() - start
                            result.steps_per_s = len(rows) / result.write_s
                            verify(system, rows, args.steps_per_trajectory, args.seed)
                        finally:
                            system.close()
                    console.print(
                        f"[dim]repeat {repeat + 1}/{args.repeat} #{position + 1} {spec.backend:8} {spec.name:20} "
                        f"batch {size:>6,}: {result.steps_per_s:9,.0f} steps/s, verified[/dim]"
                    )
                except Exception as exc:  # one broken system must not hide the others' results
                    result.error = f"{type(exc).__name__}: {exc}"
                    console.print(f"[red]{spec.backend} {spec.name} batch {size} FAILED: {result.error}[/red]")
                results.append(result)

        summary = []
        for backend in dict.fromkeys(spec.backend for spec in specs):
            table = Table(
                title=f"{backend}: {args.steps:,} small steps, one transaction per batch", title_justify="left"
            )
            for header in ("System", "Durability", "Batch", "Steps/s median (min-max)", "fle-db ÷ this"):
                table.add_column(header, justify="left" if header in ("System", "Durability") else "right")
            for spec in (s for s in specs if s.backend == backend):
                for size in sizes:
                    mine = [r for r in results if (r.system, r.backend, r.batch_size) == (spec.name, backend, size)]
                    ok = [r for r in mine if r.error is None]
                    fle = {
                        r.repeat: r
                        for r in results
                        if (r.system, r.backend, r.batch_size) == ("fle-db", backend, size) and r.error is None
                    }
                    ratios = [fle[r.repeat].steps_per_s / r.steps_per_s for r in ok if r.repeat in fle]
                    rates = [r.steps_per_s for r in ok]
                    summary.append(
                        {
                            "system": spec.name,
                            "backend": backend,
                            "batch_size": size,
                            "steps_per_s": rates,
                            "fle_ratio": ratios,
                            "errors": [r.error for r in mine if r.error],
                        }
                    )
                    table.add_row(
                        spec.name,
                        ok[0].durability if ok else "[red]FAILED[/red]",
                        f"{size:,}",
                        fmt_rate(rates),
                        "-" if spec.name == "fle-db" else fmt_ratio(ratios),
                    )
            console.print(table)
        console.print(
            "Steps/s = steps / wall time of the loop over all batches (serialisation included). fle-db ÷ this: "
            "ratio of rates within the same repeat, median (min-max); > 1 means fle-db is faster."
        )
        note_source_change(console, facts)
        elapsed = time.perf_counter() - started
        console.print(f"Wall time {elapsed:.1f} s")
        write_json(console, args, "batch", facts, elapsed, runs=[asdict(r) for r in results], summary=summary)
        return 1 if any(r.error for r in results) else 0
    finally:
        if own_dir:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
