"""Export and import rates, file sizes and memory, on FLE-like checkpoints.

Fills a fresh database per backend with ``--trajectories`` x ``--steps`` workload checkpoints
(step, agent output, feedback, ~53 KB game state) and metadata, then measures: export to
``jsonl``, ``jsonl.zst``, ``chat`` and ``parquet`` (if pyarrow is installed); import of the
``.zst`` file into a second fresh database; the same import again (idempotent: nothing written);
and the tracemalloc peak of exporting and importing ``--small`` trajectories against all of them
(the transient peak: peak minus what stays allocated in the client's bounded caches).

Usage: ``python -m benchmarks.export [--trajectories 20] [--steps 50] [--small 2]
[--backends sqlite,postgres]``. PostgreSQL databases are created and dropped on the server of
``FLE_DB_TEST_POSTGRES_URL`` (default: the local one as ``postgres``).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
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

console = Console(highlight=False)
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


def fill(client: DatabaseClient, trajectories: int, steps: int) -> None:
    wl = Workload(7)
    for t in range(trajectories):
        client.save_trajectory(wl.trajectory(t))
        for start in range(0, steps, 25):
            client.batch_save_steps(
                [
                    {**wl.step_record(t, n), **{k: v for k, v in wl.checkpoint(t, n).items() if k != "step"}}
                    for n in range(start, min(start + 25, steps))
                ]
            )
        client.save_metadata(wl.trajectory_id(t), "model", wl.model(t))


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


def bench(backend: str, trajectories: int, steps: int, small: int, folder: Path) -> None:
    checkpoints = trajectories * steps
    with fresh(backend, folder) as source:
        fill(source, trajectories, steps)
        formats = [("jsonl", "e.jsonl"), ("jsonl", "e.jsonl.zst"), ("chat", "c.jsonl")]
        if importlib.util.find_spec("pyarrow"):
            formats.append(("parquet", "e.parquet"))
        for fmt, name in formats:
            seconds = timed(lambda: source.export_data(folder / name, fmt))  # noqa: B023
            size = (folder / name).stat().st_size
            console.print(f"{backend:8} export {name:12} {checkpoints / seconds:8,.0f} ckpt/s  {size / 1e6:7.1f} MB")
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
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--small", type=int, default=2)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends.split(","):
            bench(backend, args.trajectories, args.steps, args.small, Path(folder))


if __name__ == "__main__":
    main()
