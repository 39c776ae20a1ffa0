"""``examples/agent_loop.py`` survives SIGKILL: killed mid-run (twice) and rerun, its trajectory
holds every step exactly once, each as an uninterrupted run would have saved it — on every backend."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import ALL_BACKENDS

from fle_db import DatabaseClient
from fle_db.errors import FleDBError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "agent_loop.py"
STEPS = 40


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_loop", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _uninterrupted(example: ModuleType) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(step fields, game state) of every step of a run that was never killed."""
    state: dict[str, Any] = {"tick": 0, "furnaces": 0, "iron_plates": 0}
    expected = []
    for number in range(STEPS):
        code = example.agent(state)
        state, _feedback, reward = example.environment(state, code)
        expected.append(({"step_number": number, "action": code, "reward": reward}, state))
    return expected


def _saved(url: str, run_id: str) -> int:
    with DatabaseClient(url, auto_migrate=False) as db:
        try:
            return len(db.load_steps(run_id))
        except FleDBError:  # the run has not created its trajectory (or the schema) yet
            return 0


def _start(url: str, run_id: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(EXAMPLE), "--url", url, "--run-id", run_id, "--steps", str(STEPS)]
    return subprocess.Popen([*command, "--delay", "0.02"], stdout=subprocess.PIPE, text=True, cwd=ROOT)


@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
def test_agent_loop_killed_twice_mid_run_resumes_without_losing_or_repeating_a_step(
    backend_name: str, make_url: Any
) -> None:
    db_url = make_url(backend_name)
    run_id = "killed-run"
    for kill_after in (8, 20):
        process = _start(db_url, run_id)
        deadline = time.monotonic() + 60
        while _saved(db_url, run_id) < kill_after and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert process.poll() is None, "the run ended before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        assert _saved(db_url, run_id) < STEPS
    final = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", db_url, "--run-id", run_id, "--steps", str(STEPS), "--delay", "0"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert final.returncode == 0, final.stderr
    assert "resuming after step" in final.stdout
    example = _example()
    with DatabaseClient(db_url) as db:
        steps = db.load_steps(run_id)
        assert [step["step_number"] for step in steps] == list(range(STEPS))
        for step, (fields, state) in zip(steps, _uninterrupted(example), strict=True):
            assert {key: step[key] for key in fields} == fields
            assert db.load_game_state(step["game_state_id"]) == state
        trajectory = db.load_trajectory(run_id)
        assert trajectory["total_reward"] == sum(fields["reward"] for fields, _ in _uninterrupted(example))
        assert trajectory["end_time"] is not None
