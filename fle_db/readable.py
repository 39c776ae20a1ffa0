"""What a checkpoint says, as text for people: the agent's code and the environment's answer.

Shared by the chat export, ``fle-db show`` and the viewer, so they read a step alike: the code
is the agent output's ``code``, else the step's ``code`` or ``action``; the answer is the feedback's
``stdout`` plus ``Error: <error>``, else the same fields of the step's ``observation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

_KEY_FIELDS = ("trajectory_id", "step_number")


def agent_code(step: Mapping[str, Any] | None, agent_output: Mapping[str, Any] | None) -> str | None:
    """The program the agent ran at a step: the first non-empty string of the agent output's
    ``code``, the step's ``code`` and the step's ``action``; None when there is none."""
    for candidate in ((agent_output or {}).get("code"), (step or {}).get("code"), (step or {}).get("action")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


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
