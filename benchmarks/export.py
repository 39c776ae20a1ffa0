"""Export and import rates, file sizes and memory, on FLE-like checkpoints.

Fills a fresh database per backend with ``--trajectories`` x ``--steps`` workload checkpoints
(step, agent output, feedback, ~53 KB game state) and metadata, each trajectory with one fork
at its middle step carrying ``--fork-steps`` checkpoints (so that ``preference`` has sibling
continuations to rank), then measures: export to every format (``jsonl``, ``jsonl.zst``,
``chat``, ``sft``, ``preference``, ``adp``, and ``parquet`` and ``hf`` if pyarrow is installed) as
trajectories/s, checkpoints/s and output MB/s (each output deleted after it is measured); import
of the ``.zst`` file into a second fresh database; the same import again (idempotent: nothing
written); and the tracemalloc peak of exporting and importing ``--small`` trajectories against
all of them (the transient peak: peak minus what stays allocated in the client's bounded caches).

Usage: ``python -m benchmarks.export [--trajectories 20] [--steps 500] [--fork-steps 5] [--small 2]
[--backends sqlite,postgres] [--formats jsonl,chat,...] [--rates-only]``. PostgreSQL databases are created and
dropped on the server of ``FLE_DB_TEST_POSTGRES_URL`` (default: the local one as ``postgres``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from rich.console import Console

from fle_db import DatabaseClient
from fle_db.workload import Workload

console = Console(highlight=False, soft_wrap=True)
ADMIN_URL = os.environ.get("FLE_DB_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh(backend: str, folder: Path) -> Iterator[DatabaseClient]:
    if backend == "sqlite":
        with DatabaseClient(f"sqlite:///{folder / uuid.uuid4().hex}.db") as client:
            yield client
        return
    name = f"fle_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with DatabaseClient(f"{ADMIN_URL.rpartition('/')[0]}/{name}") as client:
            yield client
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fill(client: DatabaseClient, trajectories: int, steps: int, fork_steps: int) -> None:
    wl = Workload(7)
    for t in range(trajectories):
        tid = wl.trajectory_id(t)
        client.save_trajectory(wl.trajectory(t))
        save(client, wl, t, tid, range(steps))
        client.save_metadata(tid, "model", wl.model(t))
        if fork_steps:
            client.save_trajectory({"id": tid, "total_reward": float(t)})
            middle = steps // 2
            fork = client.fork_trajectory(tid, middle, f"{tid}-fork", total_reward=t + 0.5)
            save(client, wl, t, fork, range(middle + 1, middle + 1 + fork_steps))


def save(client: DatabaseClient, wl: Workload, t: int, tid: str, numbers: range) -> None:
    for start in range(numbers.start, numbers.stop, 25):
        client.batch_save_steps(
            [
                {**wl.step_record(t, n, tid), **{k: v for k, v in wl.checkpoint(t, n, tid).items() if k != "step"}}
                for n in range(start, min(start + 25, numbers.stop))
            ]
        )


FORMATS = {
    "jsonl": "e.jsonl",
    "jsonl.zst": "e.jsonl.zst",
    "chat": "chat.jsonl",
    "sft": "sft.jsonl",
    "preference": "pref.jsonl",
    "adp": "adp.jsonl",
    "parquet": "e.parquet",
    "hf": "hf",
}


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def transient_peak(run: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    run()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - current


def bench(
    backend: str,
    trajectories: int,
    steps: int,
    fork_steps: int,
    small: int,
    folder: Path,
    formats: list[str],
    rates_only: bool,
) -> None:
    selected = trajectories * (2 if fork_steps else 1)
    if importlib.util.find_spec("pyarrow"):
        importlib.import_module("pyarrow.parquet")  # loaded once, before the timings
    with fresh(backend, folder) as source:
        fill(source, trajectories, steps, fork_steps)
        checkpoints = trajectories * (steps + fork_steps)
        for label in formats:
            if label in ("parquet", "hf") and not importlib.util.find_spec("pyarrow"):
                continue
            path = folder / FORMATS[label]
            fmt = label.removesuffix(".zst")
            report: dict[str, object] = {}
            seconds = timed(lambda: report.update(source.export_data(path, fmt)))  # noqa: B023
            size = size_of(path)
            extra = f"  pairs {report['pairs']} ties {report['ties']}" if fmt == "preference" else ""
            console.print(
                f"{backend:8} export {label:10} {selected / seconds:7.1f} traj/s {checkpoints / seconds:8,.0f} ckpt/s"
                f" {size / 1e6 / seconds:7.1f} MB/s  {size / 1e6:7.1f} MB  {seconds:6.2f} s{extra}"
            )
            if label != "jsonl.zst":
                remove(path)
        if rates_only:
            return
        if "jsonl.zst" not in formats:
            source.export_data(folder / "e.jsonl.zst")
        with fresh(backend, folder) as target:
            seconds = timed(lambda: target.import_data(folder / "e.jsonl.zst"))
            console.print(f"{backend:8} import e.jsonl.zst  {checkpoints / seconds:8,.0f} ckpt/s")
            seconds = timed(lambda: target.import_data(folder / "e.jsonl.zst"))
            console.print(f"{backend:8} re-import (no-op)   {checkpoints / seconds:8,.0f} ckpt/s")
        ids = [Workload(7).trajectory_id(t) for t in range(small)]
        peaks = {}
        for label, selection in (("small", ids), ("all", None)):
            path = folder / f"{label}.jsonl"
            peaks[f"export {label}"] = transient_peak(lambda: source.export_data(path, trajectory_ids=selection))  # noqa: B023
            with fresh(backend, folder) as target:
                peaks[f"import {label}"] = transient_peak(lambda: target.import_data(path))  # noqa: B023
        console.print(
            f"{backend:8} transient peak {small} vs {trajectories} trajectories: "
            + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in peaks.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--fork-steps", type=int, default=5)
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--rates-only", action="store_true", help="Export rates only: no import, no memory peaks.")
    args = parser.parse_args()
    formats = args.formats.split(",")
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends.split(","):
            sizes = (args.trajectories, args.steps, args.fork_steps, args.small)
            bench(backend, *sizes, Path(folder), formats, args.rates_only)


if __name__ == "__main__":
    main()
