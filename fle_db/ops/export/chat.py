"""The ``chat`` export format (fine-tuning; not importable).

``chat`` (fine-tuning; not importable). One line per trajectory, OpenAI's chat shape:
``{"messages": [...], "metadata": {...}}``. Messages: ``system`` with the trajectory's
``system_prompt`` key when it is a string; ``user`` with the trajectory's ``task`` when it is a
string; then per step number in order an ``assistant`` turn with the agent output's ``code``
(else the step's ``code`` or ``action``: the first non-empty string) and a ``user`` turn with the environment feedback's
``stdout`` followed by ``"Error: " + error`` when ``error`` is a non-empty string (else the same
fields of the step's ``observation``; a feedback with neither field is given as its JSON). Empty
turns are left out. ``metadata``: ``trajectory_id``, ``task``, ``agent_type``, ``total_reward``,
``success``, ``steps``. Agent reasoning, game states and metadata are not used; a trajectory
without any agent code is skipped (counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...readable import agent_code, feedback_text
from .common import Checkpoint, Writable, line


class ChatSink:
    """Writes the ``chat`` format."""

    needs_states = False

    def __init__(self, out: Writable) -> None:
        self._out = out
        self.skipped = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        messages: list[dict[str, str]] = []
        for role, text in (("system", trajectory.get("system_prompt")), ("user", trajectory.get("task"))):
            if isinstance(text, str) and text:
                messages.append({"role": role, "content": text})
        count = 0
        for cp in checkpoints:
            count += 1
            code = agent_code(cp.step, cp.agent_output)
            if code:
                messages.append({"role": "assistant", "content": code})
            answer = feedback_text(cp.step, cp.environment_feedback)
            if answer:
                messages.append({"role": "user", "content": answer})
        if not any(m["role"] == "assistant" for m in messages):
            self.skipped += 1
            return count
        meta = {key: trajectory.get(key) for key in ("task", "agent_type", "total_reward", "success")}
        self._out.write(
            line({"messages": messages, "metadata": {"trajectory_id": trajectory["id"], **meta, "steps": count}})
        )
        return count

    def finish(self, trajectories: int, checkpoints: int) -> None:
        return None
