"""Bytes before and after ``thin(keep_every=10)`` on FLE-like checkpoints.

Fills a fresh database per backend with ``--trajectories`` x ``--steps`` workload checkpoints
(step, agent output, feedback, ~53 KB game state; each trajectory with a fork of ``--fork-steps``
steps at its middle step, as ``benchmarks.export`` does), then thins every trajectory to every
``--keep-every``-th state and reports, before and after:

* payload bytes (the stored bodies of every live and history table, as ``cleanup`` and ``thin``
  count them): before, right after the thinning (the dropped rows are in history), and after the
  history is pruned — checked against the report's ``bytes_freed_now`` and ``bytes_freed``;
* the game states' share of those (blobs and state rows);
* the database's size on disk: SQLite's file (with WAL) and PostgreSQL's fle-db tables
  (``get_statistics()["size"]``), before, after the prune with ``optimize(vacuum=True)``
  (SQLite: VACUUM rewrites the file; PostgreSQL: plain VACUUM, which keeps the pages for reuse),
  and on PostgreSQL after ``VACUUM FULL`` too (which returns them to the filesystem);
* the thinning's and the dry run's wall time.

Usage: ``python -m benchmarks.thin [--trajectories 20] [--steps 500] [--fork-steps 5]
[--keep-every 10] [--backends sqlite,postgres]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from fle_db import DatabaseClient
from fle_db.schema import HISTORY, VERSIONED_TABLES

from .export import console, fill, fresh

_BODY_TABLES = [t.name for t in VERSIONED_TABLES if "body" in t.c] + [h.name for h in HISTORY.values() if "body" in h.c]


def payload_bytes(client: DatabaseClient, tables: list[str] = _BODY_TABLES) -> int:
    """Stored payload bytes of ``tables`` (default: every live and history table)."""
    with client._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        return sum(
            # fle-db's own table names, not input: S608 does not apply.
            int(conn.execute(text(f"SELECT coalesce(sum(length(body)), 0) FROM {table}")).scalar() or 0)  # noqa: S608
            for table in tables
        )


def prune_and_vacuum(client: DatabaseClient) -> int:
    """Prune all history (up to now) and vacuum; returns the size on disk afterwards."""
    time.sleep(0.01)
    client._history.prune_history(time.time_ns() // 1000)
    return int(client.optimize(vacuum=True)["size_after"])


def vacuum_full(client: DatabaseClient) -> int:
    """PostgreSQL: VACUUM FULL fle-db's tables; returns their size afterwards."""
    with client._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM FULL " + ", ".join(t.name for t in (*VERSIONED_TABLES, *HISTORY.values())))
        )
    return int(client.get_statistics()["size"])


def bench(backend: str, trajectories: int, steps: int, fork_steps: int, keep_every: int, folder: Path) -> None:
    with fresh(backend, folder) as client:
        fill(client, trajectories, steps, fork_steps)
        size_before = prune_and_vacuum(client)
        payload_before = payload_bytes(client)
        states_before = payload_bytes(client, ["blobs", "game_states"])
        started = time.perf_counter()
        dry = client.thin(older_than=0, keep_every=keep_every, dry_run=True)
        dry_seconds = time.perf_counter() - started
        started = time.perf_counter()
        report = client.thin(older_than=0, keep_every=keep_every)
        seconds = time.perf_counter() - started
        payload_thinned = payload_bytes(client)
        size_after = prune_and_vacuum(client)
        payload_pruned = payload_bytes(client)
        states_after = payload_bytes(client, ["blobs", "game_states"])
        exact = (
            payload_before - payload_thinned == report["bytes_freed_now"] == dry["bytes_freed_now"]
            and payload_before - payload_pruned == report["bytes_freed"] == dry["bytes_freed"]
        )
        full = f"; after VACUUM FULL {vacuum_full(client) / 1e6:.1f} MB" if backend == "postgres" else ""
        assert client.validate()["ok"]
        console.print(
            f"{backend:8} {trajectories}x{steps} (+{fork_steps}-step forks), thin(keep_every={keep_every}): "
            f"{report['game_states']:,} of {trajectories * (steps + fork_steps):,} states dropped, "
            f"{report['blobs_deleted']:,} blobs deleted, {report['blobs_reencoded']:,} re-encoded "
            f"in {seconds:.2f} s (dry run {dry_seconds:.2f} s)\n"
            f"{'':8} payload {payload_before / 1e6:.1f} MB -> {payload_thinned / 1e6:.1f} MB right after "
            f"(history holds the dropped rows) -> {payload_pruned / 1e6:.1f} MB after the prune "
            f"({payload_pruned / payload_before:.1%}); report figures exact: {exact}\n"
            f"{'':8} of which game states {states_before / 1e6:.1f} MB -> {states_after / 1e6:.1f} MB "
            f"({states_after / states_before:.1%})\n"
            f"{'':8} on disk {size_before / 1e6:.1f} MB -> {size_after / 1e6:.1f} MB after prune + "
            f"optimize(vacuum=True){full}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--fork-steps", type=int, default=5)
    parser.add_argument("--keep-every", type=int, default=10)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for backend in args.backends.split(","):
            bench(backend, args.trajectories, args.steps, args.fork_steps, args.keep_every, Path(folder))


if __name__ == "__main__":
    main()
