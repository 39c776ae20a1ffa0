"""The ``chat`` export format (fine-tuning; not importable).

``chat`` (fine-tuning; not importable). One line per trajectory, OpenAI's chat shape:
``{"messages": [...], "metadata": {...}}``. Messages: ``system`` with the trajectory's
``system_prompt`` key when it is a string; ``user`` with the trajectory's ``task`` when it is a
string; then per step number in order an ``assistant`` turn with the agent output's ``code``
(else the step's ``action``, when a string) and a ``user`` turn with the environment feedback's
``stdout`` followed by ``"Error: " + error`` when ``error`` is a non-empty string (else the same
fields of the step's ``observation``; a feedback with neither field is given as its JSON). Empty
turns are left out. ``metadata``: ``trajectory_id``, ``task``, ``agent_type``, ``total_reward``,
``success``, ``steps``. Agent reasoning, game states and metadata are not used; a trajectory
without any agent code is skipped (counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

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
            code = _agent_code(cp)
            if code:
                messages.append({"role": "assistant", "content": code})
            answer = _feedback_text(cp)
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


def _agent_code(cp: Checkpoint) -> str | None:
    code = (cp.agent_output or {}).get("code")
    if not isinstance(code, str):
        code = (cp.step or {}).get("action")
    return code if isinstance(code, str) else None


def _feedback_text(cp: Checkpoint) -> str | None:
    source: Any = cp.environment_feedback
    if source is None:
        source = (cp.step or {}).get("observation")
    if isinstance(source, str):
        return source
    if not isinstance(source, dict):
        return None
    stdout, error = source.get("stdout"), source.get("error")
    if "stdout" not in source and "error" not in source:
        rest = {k: v for k, v in source.items() if k not in ("trajectory_id", "step_number")}
        return orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode() if rest else None
    text = stdout if isinstance(stdout, str) else ""
    if isinstance(error, str) and error:
        text = f"{text}\n\nError: {error}" if text else f"Error: {error}"
    return text or None
