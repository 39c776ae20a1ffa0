"""The ``chat`` and ``sft`` export formats (fine-tuning; not importable).

``chat``. One line per trajectory, OpenAI's chat shape:
``{"messages": [...], "metadata": {...}}``. Messages: ``system`` with the trajectory's
``system_prompt`` key when it is a string; ``user`` with the trajectory's ``task`` when it is a
string; then per step number in order an ``assistant`` turn with the agent output's ``code``
(else the step's ``code`` or ``action``: the first non-empty string) and a ``user`` turn with the environment feedback's
``stdout`` followed by ``"Error: " + error`` when ``error`` is a non-empty string (else the same
fields of the step's ``observation``; a feedback with neither field is given as its JSON). Empty
turns are left out. ``metadata``: ``trajectory_id``, ``task``, ``agent_type``, ``total_reward``,
``success``, ``steps``. Agent reasoning, game states and metadata are not used; a trajectory
without any agent code is skipped (counted in ``skipped``).

``sft``. A ``chat`` line plus three lists aligned with the assistant turns (the i-th entry
belongs to the i-th ``assistant`` message): ``step_rewards`` (the step's ``reward``, or null),
``step_values`` and ``step_advantages`` (the step's search-node ``value`` / ``advantage``, null
when the step is not a search node or has none; all null on a backend without search trees).
Select runs with the export filters ``success`` and ``min_total_reward``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ...readable import agent_code, feedback_text
from ...validation import is_number
from .common import Checkpoint, Writable, line

#: A trajectory's search-node statistics: ``{step_number: (value, advantage)}``.
NodeStats = Callable[[str], dict[int, tuple[float | None, float | None]]]


def opening(trajectory: dict[str, Any]) -> list[dict[str, str]]:
    """The messages before the first step: the system prompt and the task, when they are text."""
    return [
        {"role": role, "content": text}
        for role, text in (("system", trajectory.get("system_prompt")), ("user", trajectory.get("task")))
        if isinstance(text, str) and text
    ]


def step_turns(cp: Checkpoint) -> tuple[str | None, str | None]:
    """The assistant turn (the agent's code) and the user turn (the environment's answer) of a
    checkpoint; None for a turn that is empty."""
    return agent_code(cp.step, cp.agent_output), feedback_text(cp.step, cp.environment_feedback)


@dataclass
class Conversation:
    """A trajectory as chat messages, with per-assistant-turn rewards and search statistics."""

    messages: list[dict[str, str]]
    rewards: list[float | None] = field(default_factory=list)
    values: list[float | None] = field(default_factory=list)
    advantages: list[float | None] = field(default_factory=list)
    steps: int = 0

    @classmethod
    def of(
        cls,
        trajectory: dict[str, Any],
        checkpoints: Iterator[Checkpoint],
        nodes: dict[int, tuple[float | None, float | None]],
    ) -> Conversation:
        """Read ``checkpoints`` (in step order) into a conversation."""
        talk = cls(opening(trajectory))
        for cp in checkpoints:
            talk.steps += 1
            code, answer = step_turns(cp)
            if code:
                talk.messages.append({"role": "assistant", "content": code})
                reward = (cp.step or {}).get("reward")
                talk.rewards.append(float(reward) if is_number(reward) else None)
                value, advantage = nodes.get(cp.step_number, (None, None))
                talk.values.append(value)
                talk.advantages.append(advantage)
            if answer:
                talk.messages.append({"role": "user", "content": answer})
        return talk

    def metadata(self, trajectory: dict[str, Any]) -> dict[str, Any]:
        """``trajectory_id``, ``task``, ``agent_type``, ``total_reward``, ``success``, ``steps``."""
        meta = {key: trajectory.get(key) for key in ("task", "agent_type", "total_reward", "success")}
        return {"trajectory_id": trajectory["id"], **meta, "steps": self.steps}


class ChatSink:
    """Writes the ``chat`` format, or ``sft`` when given the search-node statistics to add."""

    needs_states = False

    def __init__(self, out: Writable, node_stats: NodeStats | None = None) -> None:
        self._out = out
        self._node_stats = node_stats
        self.skipped = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        nodes = self._node_stats(trajectory["id"]) if self._node_stats is not None else {}
        talk = Conversation.of(trajectory, checkpoints, nodes)
        if not talk.rewards:
            self.skipped += 1
            return talk.steps
        record: dict[str, Any] = {"messages": talk.messages, "metadata": talk.metadata(trajectory)}
        if self._node_stats is not None:
            record.update(step_rewards=talk.rewards, step_values=talk.values, step_advantages=talk.advantages)
        self._out.write(line(record))
        return talk.steps

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        return {}
