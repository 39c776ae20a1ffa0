"""The commit position other features follow (the live tail): monotonic, and at or after every
commit a reader has seen, with writers running concurrently (no lock orders them on PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from conftest import ALL_BACKENDS

from fle_db import DatabaseClient
from fle_db.backends.base import as_history


@pytest.mark.parametrize("server", ALL_BACKENDS)
def test_the_commit_position_only_moves_forward_and_covers_every_commit_seen(
    server: str, make_url: Callable[[str], str]
) -> None:
    url = make_url(server)
    stop = threading.Event()
    writing = threading.Barrier(4)  # the three writers have each committed a step, and the reader is ready

    def write(name: str) -> None:
        with DatabaseClient(url, backup_interval=0) as db:
            db.save_step({"trajectory_id": name, "step_number": 0})
            writing.wait(timeout=60)
            n = 1
            while not stop.is_set():
                db.save_step({"trajectory_id": name, "step_number": n})
                n += 1

    with DatabaseClient(url, backup_interval=0) as db:
        history = as_history(db._backend)  # type: ignore[attr-defined]
        writers = [threading.Thread(target=write, args=(f"w{i}",)) for i in range(3)]
        for w in writers:
            w.start()
        positions = []
        try:
            writing.wait(timeout=60)
            for _ in range(40):
                positions.append(history.commit_position())
        finally:
            stop.set()
            for w in writers:
                w.join()
        instants = [p.committed_at for p in positions]
        assert instants == sorted(instants)
        assert len(set(instants)) > 1
        final = history.commit_position()
        steps = sum(len(db.load_steps(f"w{i}")) for i in range(3))
        with history.snapshot() as snap:
            log = [row for chunk in snap.rows("commit_log") for row in chunk]
        assert snap.head == final
        assert len({row["seq"] for row in log}) == len(log) >= steps  # one token per commit, unique
        assert max(row["committed_at"] for row in log) == final.committed_at


@pytest.mark.parametrize("server", ["postgres", "mysql"])
def test_a_writer_never_waits_for_another_writers_open_transaction(server: str, make_url: Callable[[str], str]) -> None:
    """No lock shared by all writers: while one write transaction is open (its token drawn, a
    step written, not committed), another client's checkpoint commits at once."""
    url = make_url(server)
    with DatabaseClient(url, backup_interval=0) as holder, DatabaseClient(url, backup_interval=0) as other:
        backend = holder._backend  # type: ignore[attr-defined]
        with backend._commit() as conn:
            backend._ensure_trajectories(conn, ["open"], 0)  # a stamped row, not committed
            done = threading.Event()
            thread = threading.Thread(
                target=lambda: (other.save_step({"trajectory_id": "free", "step_number": 0}), done.set())
            )
            thread.start()
            assert done.wait(timeout=10), "the second writer waited for the first one's transaction"
            thread.join()
        assert other.load_steps("free")[0]["step_number"] == 0
