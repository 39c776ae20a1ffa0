"""Shared pieces of the benchmarks: the pre-generated workload, scratch PostgreSQL databases,
on-disk sizes, statistics, machine facts and small formatting helpers."""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import orjson
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

import fle_db
from fle_db.workload import Workload

#: PostgreSQL server the benchmarks create their scratch databases on (the URL's database is
#: only used for CREATE/DROP DATABASE).
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
#: Every scratch database name starts with this.
DB_PREFIX = "fle_bench_"
#: Backends in display order.
BACKENDS = ("sqlite", "postgres")

T = TypeVar("T")


# -- workload -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Item:
    """One pre-generated checkpoint: FLE-like (see :class:`fle_db.workload.Workload`), or a small
    step with no parts and no state (``benchmarks.concurrent``)."""

    tid: str
    step: int
    record: dict[str, Any]  # the step record (trajectory_id, step_number, action, observation, ...)
    agent_output: dict[str, Any] | None
    environment_feedback: dict[str, Any] | None
    state: dict[str, Any] | None

    def step_side(self) -> dict[str, Any]:
        """What the raw baselines and LangGraph store as the step: step record, output, feedback."""
        return {
            "step": self.record,
            "agent_output": self.agent_output,
            "environment_feedback": self.environment_feedback,
        }


def trajectory_id(index: int) -> str:
    """The trajectory id the benchmarks use for workload trajectory ``index``."""
    return f"bench-{index:05d}"


def generate_round_robin(trajectories: int, steps: int, seed: int) -> list[Item]:
    """All ``trajectories * steps`` checkpoints in write order: step 0 of every trajectory, then step 1, ..."""
    workload = Workload(seed, cache_trajectories=max(trajectories, 1))
    items = []
    for step in range(steps):
        for index in range(trajectories):
            cp = workload.checkpoint(index, step, trajectory_id(index))
            items.append(
                Item(
                    tid=trajectory_id(index),
                    step=step,
                    record=cp["step"],
                    agent_output=cp["agent_output"],
                    environment_feedback=cp["environment_feedback"],
                    state=cp["game_state"],
                )
            )
    return items


def raw_json_bytes(items: Sequence[Item]) -> tuple[int, int]:
    """``(step-side bytes, state bytes)`` of the raw baselines' orjson serialisation of ``items``."""
    steps = sum(len(orjson.dumps(item.step_side())) for item in items)
    states = sum(len(orjson.dumps(item.state)) for item in items if item.state is not None)
    return steps, states


def small_step(tid: str, number: int, rng: random.Random) -> dict[str, Any]:
    """A spec-sized step: the spec's ``{'trajectory_id', 'step_number', 'action': 'action<n>'}``
    plus a reward and a short observation (~150 bytes of JSON)."""
    return {
        "trajectory_id": tid,
        "step_number": number,
        "action": f"action{number}",
        "reward": round(rng.uniform(-1.0, 1.0), 4),
        "observation": f"inventory iron-plate={rng.randrange(500)} copper-plate={rng.randrange(500)}",
    }


# -- PostgreSQL -----------------------------------------------------------------------------
class PgServer:
    """Creates and drops scratch databases (``fle_bench_*``) on one PostgreSQL server."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self._created = 0

    def url(self, database: str) -> str:
        """``admin_url`` pointing at ``database`` instead."""
        parts = urlsplit(self.admin_url)
        return urlunsplit(parts._replace(path="/" + database))

    @contextmanager
    def scratch(self, label: str) -> Iterator[str]:
        """A fresh, empty database for the duration of the block; yields its URL. Dropped after
        (``WITH (FORCE)``: connections a broken system left open do not block the drop)."""
        self._created += 1
        safe = "".join(ch if ch.isalnum() else "_" for ch in label.lower())
        name = f"{DB_PREFIX}{safe}_{os.getpid()}_{self._created}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def settings(self) -> dict[str, str]:
        """Server version and the settings that decide durability and TOAST compression."""
        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "default_toast_compression",
        )
        with psycopg.connect(self.admin_url) as conn:
            return {name: str(scalar(conn, "SELECT current_setting(%s)", (name,))) for name in names}


def scalar(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    """The single value ``query`` returns (raises if it returns no row)."""
    row = conn.execute(query, params).fetchone()
    if row is None:
        raise RuntimeError(f"no row from {query!r}")
    return row[0]


def pg_table_bytes(url: str) -> int:
    """Sum of ``pg_total_relation_size`` (heap + TOAST + indexes) over every user table of the
    database at ``url``: a scratch database holds exactly one system's tables."""
    query = """
        SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'm')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
    """
    with psycopg.connect(url) as conn:
        return int(scalar(conn, query))


def pg_synchronous_commit(url: str) -> str:
    """``synchronous_commit=<value>`` a new session at ``url`` gets (the benchmarks never change it)."""
    with psycopg.connect(url) as conn:
        return f"synchronous_commit={scalar(conn, 'SHOW synchronous_commit')}"


@contextmanager
def scratch_location(backend: str, pg: PgServer | None, data_dir: Path, label: str) -> Iterator[str]:
    """A fresh SQLite file path (in ``data_dir``) or scratch PostgreSQL database URL for one run,
    removed afterwards."""
    if backend == "postgres":
        if pg is None:
            raise ValueError("a PostgreSQL run needs a PgServer")
        with pg.scratch(label) as url:
            yield url
        return
    path = data_dir / f"{label}.sqlite"
    remove_sqlite(path)
    try:
        yield str(path)
    finally:
        remove_sqlite(path)


# -- SQLite ---------------------------------------------------------------------------------
def sqlite_synchronous(conn: sqlite3.Connection) -> str:
    """``<journal mode>, synchronous=<level>`` of an open sqlite3 connection, read back."""
    mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).upper()
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    return f"{mode}, synchronous={ {0: 'OFF', 1: 'NORMAL', 2: 'FULL', 3: 'EXTRA'}.get(level, str(level)) }"


def sqlite_bytes(path: Path) -> int:
    """Bytes of a SQLite database: the main file plus its ``-wal`` and ``-shm`` files if present."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        candidate = Path(f"{path}{suffix}")
        if candidate.exists():
            total += candidate.stat().st_size
    return total


def remove_sqlite(path: Path) -> None:
    """Delete a SQLite database file and its ``-wal``/``-shm`` companions."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def filesystem_of(path: Path) -> str:
    """The filesystem type ``path`` lives on (from ``/proc/mounts``; ``unknown`` elsewhere).
    tmpfs makes fsync free, so SQLite durability numbers from it would be meaningless."""
    target = str(path.resolve())
    best, kind = "", "unknown"
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in lines:
        fields = line.split()
        if len(fields) >= 3:
            mount = fields[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    return kind


# -- statistics and timing ------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    """Median; NaN for no values."""
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in (0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def timed_ms(fn: Callable[..., T], *args: Any) -> tuple[float, T]:
    """``(milliseconds, result)`` of one call of ``fn(*args)``."""
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1000.0, result


@contextmanager
def gc_paused(pause: bool = True) -> Iterator[None]:
    """Collect garbage, then (if ``pause``) keep the cyclic collector from running in the block.

    Decoding game states allocates ~10^4 objects each; left running, the collector rescans them
    while they are being built, so a timed read would mostly measure the interpreter's heap state
    (with it running, loading 50 states took ~2x longer in this harness, and single state loads
    showed 5-20 ms pauses). Reference counting still frees everything acyclic.
    """
    gc.collect()
    if not pause:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def rotated(jobs: Sequence[T], repeat: int) -> list[T]:
    """``jobs`` rotated by ``repeat`` places: across repeats every job runs at every position, so
    no system always runs first (cold) or last (after the others heated the disk)."""
    if not jobs:
        return []
    shift = repeat % len(jobs)
    return [*jobs[shift:], *jobs[:shift]]


def fmt_rate(values: Sequence[float]) -> str:
    """``median (min-max)`` of rates, as integers."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.0f}"
    return f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def fmt_ratio(values: Sequence[float]) -> str:
    """``xmedian (min-max)`` of ratios."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"x{values[0]:.2f}"
    return f"x{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def fmt_ms(value: float) -> str:
    """Milliseconds with precision that suits the magnitude."""
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def mb(value: float) -> str:
    """Bytes as MB (10^6) with one decimal."""
    return f"{value / 1e6:.1f}"


# -- machine facts --------------------------------------------------------------------------
def fle_db_source() -> str:
    """Short digest and newest modification time of the ``fle_db`` sources this process imported
    from: identifies the storage engine version the numbers belong to."""
    root = Path(fle_db.__file__).parent
    files = sorted(root.rglob("*.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    newest = max(path.stat().st_mtime for path in files)
    return f"sha256 {digest.hexdigest()[:12]}, newest file {datetime.fromtimestamp(newest, UTC):%Y-%m-%d %H:%M:%S} UTC"


def machine_facts(pg: PgServer | None, data_dir: Path) -> dict[str, Any]:
    """What the numbers depend on: CPUs, Python, SQLite, PostgreSQL and its durability settings,
    the filesystem under the SQLite files, package versions, and the date."""
    packages = {}
    for name in (
        "fle-db",
        "SQLAlchemy",
        "psycopg",
        "orjson",
        "langgraph-checkpoint-sqlite",
        "langgraph-checkpoint-postgres",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    facts: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlite_dir": str(data_dir),
        "sqlite_dir_filesystem": filesystem_of(data_dir),
        "packages": packages,
        "fle_db_source": fle_db_source(),
    }
    if pg is not None:
        facts["postgres"] = pg.settings()
    return facts


def note_source_change(console: Console, facts: dict[str, Any]) -> None:
    """Warn if the ``fle_db`` sources changed since :func:`machine_facts` read them: this process
    keeps running the modules it imported, but lazily imported ones may be newer."""
    now = fle_db_source()
    if now != facts["fle_db_source"]:
        console.print(
            f"[yellow]fle_db sources changed during the run (now {now}); modules imported late may differ[/yellow]"
        )


def make_console() -> Console:
    """A console that keeps wide tables readable when output goes to a file or pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=200)


def print_machine(console: Console, facts: dict[str, Any]) -> None:
    """Print the machine facts as a two-column table."""
    table = Table(title="Machine", show_header=False, title_justify="left")
    table.add_column("fact", style="bold")
    table.add_column("value")
    table.add_row("date (UTC)", facts["date"])
    table.add_row("CPUs", f"{facts['cpu_count']} (load average {' / '.join(map(str, facts['load_average']))} at start)")
    table.add_row("platform", facts["platform"])
    table.add_row("Python", facts["python"])
    table.add_row("SQLite", f"{facts['sqlite']} (files in {facts['sqlite_dir']}, {facts['sqlite_dir_filesystem']})")
    if "postgres" in facts:
        pg = facts["postgres"]
        table.add_row(
            "PostgreSQL",
            f"{pg['server_version']}: fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']}, "
            f"full_page_writes={pg['full_page_writes']}, wal_sync_method={pg['wal_sync_method']}, "
            f"TOAST {pg['default_toast_compression']}",
        )
    table.add_row("fle_db source", facts["fle_db_source"])
    table.add_row("packages", ", ".join(f"{name} {version}" for name, version in facts["packages"].items()))
    console.print(table)


def write_json(
    console: Console, args: Any, benchmark: str, facts: dict[str, Any], elapsed: float, **sections: Any
) -> None:
    """Write the raw results to ``args.json`` (if given): config, machine facts, wall time and
    the benchmark's own ``sections`` (runs, summary...)."""
    if args.json is None:
        return
    payload = {
        "benchmark": benchmark,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": facts,
        "wall_s": elapsed,
        **sections,
    }
    args.json.write_text(json.dumps(payload, indent=2, default=str))
    console.print(f"Raw results written to {args.json}")
