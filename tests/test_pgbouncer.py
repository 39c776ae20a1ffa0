"""fle-db behind PgBouncer in transaction pooling mode (Debian's ``pgbouncer``, stock settings,
started by the test on a loopback port): many writer processes share a few server connections,
so no call may rely on session state (prepared statements, startup options, SET) surviving from
one transaction to the next.

Needs PostgreSQL and the ``pgbouncer`` binary: skipped (loudly) without them, failed under
``CI=true``.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ADMIN_URL, _unreachable

from benchmarks.pgbouncer import PgBouncer, available
from fle_db import DatabaseClient
from fle_db.workload import Workload

pytestmark = pytest.mark.postgres

WRITERS = 16
#: Checkpoints each writer saves (and steps it appends, and metadata keys it sets).
STEPS = 6
#: Server connections PgBouncer keeps per database: far fewer than the writers, so every
#: writer's transactions run on connections other writers used before.
POOL_SIZE = 4
SEED = 18


def _expected(writer: int, step: int) -> dict[str, Any]:
    return Workload(SEED).checkpoint(writer, step, f"w{writer}")


def _write(url: str, writer: int, start: Any, queue: Any) -> None:
    """One writer process: save_step with every part, append_step and save_metadata, STEPS times."""
    try:
        checkpoints = [_expected(writer, step) for step in range(STEPS)]
        with DatabaseClient(url, connection_timeout=60) as db:
            start.wait(timeout=120)
            for step, checkpoint in enumerate(checkpoints):
                db.save_step(
                    checkpoint["step"],
                    agent_output=checkpoint["agent_output"],
                    environment_feedback=checkpoint["environment_feedback"],
                    game_state=checkpoint["game_state"],
                )
                db.append_step(f"log{writer}", {"action": f"a{step}"}, game_state={"writer": writer, "step": step})
                db.save_metadata(f"w{writer}", f"k{step}", {"writer": writer, "step": step})
        queue.put((writer, None))
    except BaseException as exc:
        queue.put((writer, f"{type(exc).__name__}: {exc}"))


@pytest.fixture
def bouncer() -> Iterator[PgBouncer]:
    reason = available()
    if reason is not None:
        _unreachable("PGBOUNCER", reason)
    with PgBouncer(ADMIN_URL, pool_mode="transaction", pool_size=POOL_SIZE) as running:
        yield running


def test_sixteen_writer_processes_through_pgbouncer_transaction_pooling_lose_nothing(
    make_url: Any, bouncer: PgBouncer
) -> None:
    url = bouncer.url(make_url("postgres"))
    DatabaseClient(url).close()  # migrates through PgBouncer too
    ctx = mp.get_context("spawn")
    start, queue = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=_write, args=(url, writer, start, queue)) for writer in range(WRITERS)]
    for proc in procs:
        proc.start()
    results = dict(queue.get(timeout=240) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    errors = {writer: error for writer, error in results.items() if error is not None}
    assert errors == {}, f"{len(errors)} of {WRITERS} writers failed; PgBouncer log tail:\n{bouncer.log()[-3000:]}"

    with DatabaseClient(url) as db:
        for writer in range(WRITERS):
            for step in range(STEPS):
                expected = _expected(writer, step)
                loaded = db.load_checkpoint(f"w{writer}", step)
                stored_step = dict(loaded["step"])
                assert stored_step.pop("game_state_id") is not None
                assert stored_step == expected["step"]
                for part in ("agent_output", "environment_feedback", "game_state"):
                    assert loaded[part] == expected[part], (writer, step, part)
            appended = db.load_steps(f"log{writer}")
            assert [(s["step_number"], s["action"]) for s in appended] == [(n, f"a{n}") for n in range(STEPS)]
            states = db.load_game_states(s["game_state_id"] for s in appended)
            assert [states[s["game_state_id"]] for s in appended] == [
                {"writer": writer, "step": n} for n in range(STEPS)
            ]
            assert db.load_metadata(f"w{writer}") == {f"k{n}": {"writer": writer, "step": n} for n in range(STEPS)}


def test_a_tail_through_pgbouncer_polls_and_misses_nothing(make_url: Any, bouncer: PgBouncer) -> None:
    """LISTEN cannot work through transaction pooling: the tail detects the pooler and polls."""
    url = bouncer.url(make_url("postgres"))
    with DatabaseClient(url) as db, DatabaseClient(url) as writer:
        backend: Any = db._backend  # type: ignore[attr-defined]
        assert backend.tail_listener() is None
        tail = db.tail(timeout=2, poll_interval=0.05)
        writer.batch_save_steps([{"trajectory_id": "a", "step_number": n} for n in range(3)])
        writer.save_step({"trajectory_id": "b", "step_number": 0})
        assert [(i["trajectory_id"], i["step_number"]) for i in tail] == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
