"""A checkpointing agent for the crash tests: resumes from its latest checkpoint, then writes
until it is killed, printing ``ACK <step>`` after every save that returned.

    python -m tests.faults.writer URL TRAJECTORY_ID SEED BATCH

BATCH 0 saves one checkpoint per ``save_step``; BATCH n saves n per ``batch_save_steps``.
"""

from __future__ import annotations

import sys

from fle_db import DatabaseClient
from fle_db.workload import Workload


def checkpoint(work: Workload, trajectory_id: str, number: int) -> dict[str, object]:
    parts = work.checkpoint(0, number, trajectory_id)
    return {**parts["step"], "agent_output": parts["agent_output"],
            "environment_feedback": parts["environment_feedback"], "game_state": parts["game_state"]}  # fmt: skip


def say(line: str) -> None:
    """Tell the parent (the protocol is stdout, one line per event, flushed at once)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    url, trajectory_id, seed, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    work = Workload(seed)
    with DatabaseClient(url) as db:
        db.save_trajectory({"id": trajectory_id})  # a run exists before it resumes (else NotFoundError)
        latest = db.load_latest_checkpoint(trajectory_id)
        number = 0
        if latest is not None:
            number = latest["step"]["step_number"] + 1
            if latest["game_state"] != work.game_state(0, number - 1):
                say(f"BAD-RESUME {number - 1}")
                sys.exit(3)
            say(f"RESUMED {number - 1}")
        while True:
            if batch:
                db.batch_save_steps([checkpoint(work, trajectory_id, n) for n in range(number, number + batch)])
                say("\n".join(f"ACK {n}" for n in range(number, number + batch)))
                number += batch
            else:
                db.save_step(checkpoint(work, trajectory_id, number))
                say(f"ACK {number}")
                number += 1


if __name__ == "__main__":
    main()
