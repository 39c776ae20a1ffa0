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

    def write(name: str) -> None:
        with DatabaseClient(url, backup_interval=0) as db:
            n = 0
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
