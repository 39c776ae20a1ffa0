"""A small agent loop that survives being killed: run it, kill it at any moment, run it again.

    python examples/agent_loop.py [--url URL] [--run-id ID] [--steps N] [--delay SECONDS]

Every step the agent writes a program from the game state, the environment runs it and answers,
and fle-db saves the step, the feedback and the new game state in one transaction
(``save_step``). On start the loop asks the database for its run's latest checkpoint and carries
on after it with the game state saved there, so a killed run (Ctrl-C, ``kill -9``, a power cut)
resumes where it stopped. A step the process was saving when it died was either committed (the
loop continues after it) or not at all (the loop does it again); saving the same step twice is a
no-op, so nothing is lost and nothing is duplicated. Without ``--url`` the database is the
default one (``.fle/data.db``, or what ``FLE_DB_TYPE`` and friends say).
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from fle_db import DatabaseClient

#: Iron plates a furnace smelts per tick of the toy environment.
PLATES_PER_FURNACE = 3


def agent(state: dict[str, Any]) -> str:
    """The agent: a program for the next step, written from what it sees (deterministic here;
    a language model in FLE)."""
    if state["iron_plates"] >= 10 * (state["furnaces"] + 1):
        return "place_entity(Prototype.StoneFurnace)"
    return "sleep(60)  # let the furnaces smelt"


def environment(state: dict[str, Any], code: str) -> tuple[dict[str, Any], dict[str, Any], float]:
    """The environment runs ``code`` on ``state``: the new state, its feedback and the reward."""
    new = dict(state, tick=state["tick"] + 60)
    if code.startswith("place_entity"):
        new["furnaces"] += 1
        new["iron_plates"] -= 10 * new["furnaces"]
        stdout = f"Placed stone-furnace #{new['furnaces']}"
    else:
        new["iron_plates"] += PLATES_PER_FURNACE * (new["furnaces"] + 1)
        stdout = f"Inventory: iron-plate={new['iron_plates']}"
    return new, {"stdout": stdout, "error": None}, float(new["iron_plates"] - state["iron_plates"])


def run(db: DatabaseClient, run_id: str, steps: int, delay: float = 0.0) -> int:
    """Run (or resume) ``run_id`` up to ``steps`` steps; returns the first step this call ran."""
    db.save_trajectory({"id": run_id, "task": "smelt iron plates", "agent_type": "example-agent"})
    latest = db.load_latest_checkpoint(run_id)
    if latest is None:
        first, state = 0, {"tick": 0, "furnaces": 0, "iron_plates": 0}
    else:
        first, state = latest["step"]["step_number"] + 1, latest["game_state"]
        print(f"{run_id}: resuming after step {first - 1} (tick {state['tick']})", flush=True)
    for number in range(first, steps):
        code = agent(state)
        state, feedback, reward = environment(state, code)
        step = {"trajectory_id": run_id, "step_number": number, "action": code, "reward": reward}
        db.save_step(step, environment_feedback=feedback, game_state=state)
        print(f"{run_id}: step {number} saved ({feedback['stdout']})", flush=True)
        time.sleep(delay)
    total = sum(step["reward"] for step in db.load_steps(run_id))
    db.save_trajectory({"id": run_id, "total_reward": total, "success": state["furnaces"] >= 3,
                        "end_time": datetime.now(UTC).isoformat()})  # fmt: skip
    return first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="database URL (default: the environment, else .fle/data.db)")
    parser.add_argument("--run-id", default="example-run", help="trajectory id (default: example-run)")
    parser.add_argument("--steps", type=int, default=50, help="steps of the run (default: 50)")
    parser.add_argument("--delay", type=float, default=0.1, help="seconds between steps (default: 0.1)")
    args = parser.parse_args()
    with DatabaseClient(args.url) as db:
        run(db, args.run_id, args.steps, args.delay)
    print(f"{args.run_id}: done; see it with `fle-db show {args.run_id} --steps`", flush=True)


if __name__ == "__main__":
    main()
