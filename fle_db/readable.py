"""What a checkpoint says, as text for people: the agent's code and the environment's answer.

Shared by the chat export, ``fle-db show`` and the viewer, so they read a step alike: the code
is the agent output's ``code``, else the step's ``action``; the answer is the feedback's
``stdout`` plus ``Error: <error>``, else the same fields of the step's ``observation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_KEY_FIELDS = ("trajectory_id", "step_number")


def agent_code(step: Mapping[str, Any] | None, agent_output: Mapping[str, Any] | None) -> str | None:
    """The code (or action text) the agent ran at a step; None when there is none as text."""
    code = (agent_output or {}).get("code")
    if not isinstance(code, str):
        code = (step or {}).get("action")
    return code if isinstance(code, str) else None


def feedback_text(step: Mapping[str, Any] | None, environment_feedback: Mapping[str, Any] | None) -> str | None:
    """What the environment answered: ``stdout``, then ``Error: <error>`` when there was one; a
    feedback without either field as its JSON (sorted keys); None when there is nothing."""
    source: Any = environment_feedback
    if source is None:
        source = (step or {}).get("observation")
    if isinstance(source, str):
        return source
    if not isinstance(source, Mapping):
        return None
    stdout, error = source.get("stdout"), source.get("error")
    if "stdout" not in source and "error" not in source:
        rest = {k: v for k, v in source.items() if k not in _KEY_FIELDS}
        return orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode() if rest else None
    text = stdout if isinstance(stdout, str) else ""
    if isinstance(error, str) and error:
        text = f"{text}\n\nError: {error}" if text else f"Error: {error}"
    return text or None


__all__ = ["agent_code", "feedback_text"]
