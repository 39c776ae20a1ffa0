"""The ``adp`` export format: Agent Data Protocol trajectories (not importable).

One JSON line per trajectory in the Agent Data Protocol's standardized schema
(github.com/neulab/agent-data-protocol, ``schema/`` at commit
``0dc087521a121c096a27a010f4007c9b855a1474``, ``SCHEMA_VERSION`` 1.5.0; ``schema/SCHEMA.md``):

* ``schema_version`` (:data:`ADP_SCHEMA_VERSION`), ``id`` (the trajectory id);
* ``content``: a ``text_observation`` (``source`` ``"system"``) with the trajectory's
  ``system_prompt`` and one (``source`` ``"user"``) with its ``task``, when they are text; then
  per step number in order a ``code_action`` (``language`` ``"python"``: FLE programs are Python;
  ``content``: the agent's code as in ``chat``; ``description``: null; ``reward``: the step's
  ``reward``) and a ``text_observation`` (``source`` ``"user"``) with the environment's answer as
  in ``chat``. An action followed by its answer share a ``tool_call_id``
  (``"<trajectory id>:<step number>"``), as the schema requires of a tool action and its result;
* ``available_code_languages``: ``["python"]`` when there is a code action;
* ``details``: ``{"source": "fle-db", "trajectory_id", "task", "agent_type", "total_reward",
  "success", "steps", "parent_trajectory_id", "parent_step_number"}``.

A trajectory with no step turns is skipped (counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...validation import is_number
from .chat import step_turns
from .common import Checkpoint, Writable, line

#: The ADP standardized schema version the records declare.
ADP_SCHEMA_VERSION = "1.5.0"
#: The neulab/agent-data-protocol commit whose schema the records follow.
ADP_COMMIT = "0dc087521a121c096a27a010f4007c9b855a1474"


def _observation(content: str, source: str, call: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"class_": "text_observation", "content": content, "source": source}
    if call is not None:
        item["tool_call_id"] = call
    return item


class AdpSink:
    """Writes the ``adp`` format."""

    needs_states = False

    def __init__(self, out: Writable) -> None:
        self._out = out
        self.skipped = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        tid = trajectory["id"]
        content = [
            _observation(text, source)
            for source, text in (("system", trajectory.get("system_prompt")), ("user", trajectory.get("task")))
            if isinstance(text, str) and text
        ]
        opening, count, coded = len(content), 0, False
        for cp in checkpoints:
            count += 1
            code, answer = step_turns(cp)
            call = f"{tid}:{cp.step_number}" if code and answer else None
            if code:
                coded = True
                reward = (cp.step or {}).get("reward")
                action: dict[str, Any] = {
                    "class_": "code_action",
                    "language": "python",
                    "content": code,
                    "description": None,
                    "reward": float(reward) if is_number(reward) else None,
                }
                if call is not None:
                    action["tool_call_id"] = call
                content.append(action)
            if answer:
                content.append(_observation(answer, "user", call))
        if len(content) == opening:
            self.skipped += 1
            return count
        details = {key: trajectory.get(key) for key in ("task", "agent_type", "total_reward", "success")}
        parent = {key: trajectory.get(key) for key in ("parent_trajectory_id", "parent_step_number")}
        record: dict[str, Any] = {"schema_version": ADP_SCHEMA_VERSION, "id": tid, "content": content}
        if coded:
            record["available_code_languages"] = ["python"]
        record["details"] = {"source": "fle-db", "trajectory_id": tid, **details, "steps": count, **parent}
        self._out.write(line(record))
        return count

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        return {}
