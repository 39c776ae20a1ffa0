"""Fault suite: writers killed with SIGKILL at random points must lose no acknowledged
checkpoint, expose no partial one, leave a database that validates, and resume."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from fle_db import DatabaseClient
from fle_db.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
KILLS_PER_BACKEND = 16  # 32 across the two backends, half of them in batch mode


def _writer(url: str, trajectory_id: str, seed: int, batch: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.writer", url, trajectory_id, str(seed), str(batch)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_sigkilled_writers_lose_no_acknowledged_checkpoint_and_resume(db_url: str) -> None:
    rng = random.Random(7)
    work = Workload(11)
    DatabaseClient(db_url).close()  # migrate once, outside the kill loop
    acked: set[int] = set()
    resumed = 0
    for kill in range(KILLS_PER_BACKEND):
        batch = 10 if kill % 2 else 0
        proc = _writer(db_url, "crash", 11, batch)
        time.sleep(rng.uniform(0.6, 1.3))  # start-up is ~0.5 s: kills land mid-write, mid-batch
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err
        assert "BAD-RESUME" not in out and "Traceback" not in err, err
        resumed += out.count("RESUMED")
        acked |= {int(line.split()[1]) for line in out.splitlines() if line.startswith("ACK ")}
        with DatabaseClient(db_url) as db:
            steps = db.load_steps("crash")
            numbers = [s["step_number"] for s in steps]
            assert acked <= set(numbers), f"kill {kill}: acknowledged steps lost: {sorted(acked - set(numbers))[:5]}"
            assert numbers == list(range(len(numbers))), "a checkpoint is missing in the middle"
            # Whole checkpoints only: every step has its output, feedback and state.
            assert len(db.load_agent_outputs("crash")) == len(db.load_environment_feedbacks("crash")) == len(steps)
            states = db.load_game_states(s["game_state_id"] for s in steps)
            for step in steps[-3:]:
                expected = work.checkpoint(0, step["step_number"], "crash")
                assert {k: v for k, v in step.items() if k != "game_state_id"} == expected["step"]
                assert states[step["game_state_id"]] == expected["game_state"]
    assert len(acked) > 50, "the writers barely wrote: kills came too early to test anything"
    assert resumed >= KILLS_PER_BACKEND - 2
    with DatabaseClient(db_url) as db:
        report = db.validate()
        assert report["ok"], report["problems"][:5]
