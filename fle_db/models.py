"""Validated records (pydantic v2): the shapes the client accepts.

The client API takes plain dicts (as the spec's examples do) or these models; either way the
known fields are checked strictly (``step_number`` must be an ``int``, not ``True`` or ``"1"``),
and any other key is kept as given: a record may carry whatever JSON the caller likes.
The client returns plain dicts with every key the caller gave, plus the keys the store adds.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

#: Ids and metadata keys: letters, digits and ``_ . : -``, 1 to 200 characters. Quotes, spaces,
#: SQL and control characters are refused (SQL is parameterised anyway; the narrow alphabet keeps
#: ids safe in file names, URLs, shells and logs).
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,200}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
StepNumber = Annotated[int, Field(ge=0, le=2**63 - 1)]
#: Longest free text stored in a bounded column (``task``, ``agent_type``, FLE's ``model``): the
#: ``VARCHAR(200)`` of ``schema`` (``ID_LENGTH``, checked equal by the tests), in characters as
#: PostgreSQL and MySQL count them. No NUL byte: PostgreSQL refuses it in any text. Checked here
#: so that SQLite, which bounds nothing, refuses what the servers would.
TEXT_LENGTH = 200
ShortText = Annotated[str, StringConstraints(max_length=TEXT_LENGTH, pattern=r"^[^\x00]*$")]
Number = int | float


class _Record(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class Trajectory(_Record):
    """A run of an agent on a task. Saving the same ``id`` again merges the given keys in."""

    id: Id
    agent_type: ShortText | None = None
    task: ShortText | None = None
    start_time: str | None = None
    end_time: str | None = None
    total_reward: Number | None = None
    success: bool | None = None
    #: Lineage: the trajectory was forked from this step of another trajectory.
    parent_trajectory_id: Id | None = None
    parent_step_number: StepNumber | None = None


class Step(_Record):
    """One agent step. ``(trajectory_id, step_number)`` is its key; steps are immutable."""

    trajectory_id: Id
    step_number: StepNumber
    action: Any = None
    observation: Any = None
    reward: Number | None = None
    timestamp: str | None = None
    parent_trajectory_id: Id | None = None
    parent_step_number: StepNumber | None = None


class AgentOutput(_Record):
    """What the agent produced at a step (code, reasoning, tokens...): one per step."""

    trajectory_id: Id
    step_number: StepNumber


class EnvironmentFeedback(_Record):
    """What the environment answered at a step (stdout, errors, score...): one per step."""

    trajectory_id: Id
    step_number: StepNumber


class MetadataEntry(_Record):
    """One metadata key of a trajectory; values are any JSON and may be overwritten."""

    trajectory_id: Id
    key: Id
    value: Any = None


#: A game state is any JSON object (FLE: ``GameState.to_raw()`` parsed); it has no fixed fields.
GameState = dict[str, Any]

__all__ = [
    "ID_PATTERN",
    "AgentOutput",
    "EnvironmentFeedback",
    "GameState",
    "MetadataEntry",
    "Step",
    "Trajectory",
]
