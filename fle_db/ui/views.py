"""What each page and API endpoint shows, read through the public ``DatabaseClient`` API.

Every function here returns plain JSON-ready data: the HTML pages render it, the JSON API
(``/api/v1/``) returns it as it is. Query parameters are parsed here too, so both speak the
same language; a bad one is a ``ValidationError`` (a 400), an unknown id a ``NotFoundError``
(a 404).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import orjson

from ..client import DatabaseClient
from ..errors import NotFoundError, StateThinnedError, ValidationError
from ..readable import agent_code
from .diff import decode_packed, diff_states, preview

#: Steps per page of a trajectory's step list.
STEPS_PER_PAGE = 100
#: Nodes of a search tree shown (best first).
MAX_TREE_NODES = 5000
#: Forks of a trajectory listed on its page.
MAX_FORKS = 200

_SUCCESS = {"": None, "any": None, "yes": True, "true": True, "no": False, "false": False}


def _int(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(f"{name} must be an integer, got {raw[:40]!r}") from None
    if not low <= value <= high:
        raise ValidationError(f"{name} must be in {low} .. {high}, got {value}")
    return value


def list_arguments(params: Mapping[str, str]) -> dict[str, Any]:
    """``list_trajectories`` keyword arguments from query parameters: ``task``, ``agent``,
    ``success`` (yes/no), ``since``, ``until`` (ISO 8601; a date alone means UTC midnight),
    ``q`` (id substring), ``parent``, ``order``, ``dir`` (asc/desc), ``limit``, ``cursor``."""
    success = params.get("success", "")
    if success not in _SUCCESS:
        raise ValidationError(f"success must be yes or no, got {success[:40]!r}")
    direction = params.get("dir", "desc")
    if direction not in ("asc", "desc"):
        raise ValidationError(f"dir must be asc or desc, got {direction[:40]!r}")
    return {
        "task": params.get("task") or None,
        "agent_type": params.get("agent") or None,
        "success": _SUCCESS[success],
        "since": _instant(params.get("since")),
        "until": _instant(params.get("until")),
        "id_contains": params.get("q") or None,
        "parent_trajectory_id": params.get("parent") or None,
        "order_by": params.get("order") or "start_time",
        "descending": direction == "desc",
        "limit": _int(params, "limit", 50, 1, 1000),
        "cursor": params.get("cursor") or None,
    }


def _instant(raw: str | None) -> str | None:
    """An ISO 8601 instant; a date or a time without offset (a browser's date field) is UTC."""
    if not raw:
        return None
    if len(raw) == 10:
        return raw + "T00:00:00+00:00"
    if len(raw) == 16 and raw[10] == "T":  # <input type="datetime-local">
        return raw + ":00+00:00"
    return raw


def trajectories(client: DatabaseClient, params: Mapping[str, str]) -> dict[str, Any]:
    """A page of the trajectory list: ``list_trajectories`` with the parsed parameters."""
    return client.list_trajectories(**list_arguments(params))


def _step_summary(step: Mapping[str, Any], cumulative: float) -> dict[str, Any]:
    action = step.get("action")
    reward = step.get("reward")
    return {
        "step_number": step["step_number"],
        "reward": reward,
        "cumulative_reward": cumulative,
        "timestamp": step.get("timestamp"),
        "action": _first_line(action) if isinstance(action, str) else (preview(action) if action is not None else ""),
        "has_state": step.get("game_state_id") is not None,
    }


def _first_line(text: str, limit: int = 120) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def trajectory(client: DatabaseClient, trajectory_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    """A trajectory: its record and metadata, every step's reward and cumulative reward (the
    chart), one page of its steps (``page``, from 1), its fork point and the forks made from it.

    Raises NotFoundError for an unknown id."""
    record = client.load_trajectory(trajectory_id)
    steps = client.load_steps(trajectory_id)
    rewards: list[list[Any]] = []
    summaries = []
    total = 0.0
    for step in steps:
        reward = step.get("reward")
        if isinstance(reward, (int, float)) and math.isfinite(reward):
            total += reward
        rewards.append([step["step_number"], reward, total])
        summaries.append(_step_summary(step, total))
    pages = max(1, math.ceil(len(summaries) / STEPS_PER_PAGE))
    page = pages if params.get("page") == "last" else _int(params, "page", 1, 1, pages)
    node = None
    if steps:
        try:
            node = client.get_search_node(trajectory_id=trajectory_id, step_number=steps[-1]["step_number"])
        except NotFoundError:
            node = None
    forks = client.list_trajectories(parent_trajectory_id=trajectory_id, limit=MAX_FORKS, order_by="id",
                                     descending=False)["trajectories"]  # fmt: skip
    parent = None
    if record.get("parent_trajectory_id") is not None:
        parent = {"trajectory_id": record["parent_trajectory_id"], "step_number": record.get("parent_step_number")}
    return {
        "trajectory": record,
        "metadata": client.load_metadata(trajectory_id),
        "step_count": len(steps),
        "total_reward": total,
        "rewards": rewards,
        "steps": summaries[(page - 1) * STEPS_PER_PAGE : page * STEPS_PER_PAGE],
        "page": page,
        "pages": pages,
        "parent": parent,
        "forks": forks,
        "tree": node["tree"] if node else None,
    }


def _tokens(*records: Mapping[str, Any] | None) -> dict[str, Any]:
    """Keys that count tokens (``tokens``, ``input_tokens``, ``usage``...) from the records."""
    found: dict[str, Any] = {}
    for record in records:
        for key, value in (record or {}).items():
            if "token" in key.lower() or key.lower() == "usage":
                found[key] = value
    return found


def _thinned_checkpoint(client: DatabaseClient, trajectory_id: str, step_number: int) -> dict[str, Any]:
    """The checkpoint of a step whose game state was thinned: its records, ``game_state`` None."""
    found = next(s for s in client.load_steps(trajectory_id, with_parts=True) if s["step_number"] == step_number)
    parts = {name: found.pop(name, None) for name in ("agent_output", "environment_feedback")}
    return {"step": found, **parts, "game_state": None, "state_thinned": True}


def step(client: DatabaseClient, trajectory_id: str, step_number: int, with_state: bool = False) -> dict[str, Any]:
    """A checkpoint (``load_checkpoint``) with what the page shows about it: its code, tokens,
    previous/next step numbers, search node and the size of each top-level game-state key
    (values are sent on demand: states can be megabytes; ``with_state`` adds the whole state).

    A step whose state was thinned is shown without it (``state_thinned``).

    Raises NotFoundError for an unknown step."""
    try:
        checkpoint = client.load_checkpoint(trajectory_id, step_number)
    except StateThinnedError:
        checkpoint = _thinned_checkpoint(client, trajectory_id, step_number)
    neighbours = {}
    for name, number in (("previous", step_number - 1), ("next", step_number + 1)):
        try:
            neighbours[name] = client.load_step(trajectory_id, number)["step_number"] if number >= 0 else None
        except NotFoundError:
            neighbours[name] = None
    try:
        node = client.get_search_node(trajectory_id=trajectory_id, step_number=step_number)
    except NotFoundError:
        node = None
    state = checkpoint["game_state"] or {}
    keys = [{"key": key, "bytes": len(orjson.dumps(value))} for key, value in state.items()]
    return {
        **{k: v for k, v in checkpoint.items() if k != "game_state" or with_state},
        "trajectory_id": trajectory_id,
        "step_number": step_number,
        "code": agent_code(checkpoint["step"], checkpoint.get("agent_output")),
        "tokens": _tokens(checkpoint["step"], checkpoint["agent_output"]),
        "node": node,
        "state_keys": keys if checkpoint["game_state"] is not None else None,
        "state_thinned": checkpoint.get("state_thinned", False),
        **neighbours,
    }


def state_value(client: DatabaseClient, trajectory_id: str, step_number: int, key: str) -> dict[str, Any]:
    """One top-level key of a step's game state, and its value decoded when it is base64 of
    zlib-compressed JSON (``decoded``, else None). Raises NotFoundError for an absent key."""
    state = client.load_checkpoint(trajectory_id, step_number)["game_state"] or {}
    if key not in state:
        raise NotFoundError(f"step {step_number} of {trajectory_id!r} has no game-state key {key[:80]!r}")
    decoded = decode_packed(state[key])
    return {"key": key, "value": state[key], "decoded": decoded if decoded is not state[key] else None}


def diff(client: DatabaseClient, trajectory_id: str, step_number: int, params: Mapping[str, str]) -> dict[str, Any]:
    """The structural diff from this step's game state to step ``to`` of this trajectory, or of
    ``trajectory`` (across a fork). Raises NotFoundError for an unknown step."""
    if not params.get("to"):
        raise ValidationError("diff needs ?to=<step number>")
    to = _int(params, "to", 0, 0, 2**63 - 1)
    other = params.get("trajectory") or trajectory_id
    old = client.load_checkpoint(trajectory_id, step_number)["game_state"]
    new = client.load_checkpoint(other, to)["game_state"]
    keys = diff_states(old, new)
    counts = {
        kind: sum(1 for k in keys if k["status"] == kind) for kind in ("added", "removed", "changed", "unchanged")
    }
    return {
        "from": {"trajectory_id": trajectory_id, "step_number": step_number, "has_state": old is not None},
        "to": {"trajectory_id": other, "step_number": to, "has_state": new is not None},
        "keys": keys,
        "counts": counts,
    }


def tree(client: DatabaseClient, tree_id: str) -> dict[str, Any]:
    """A search tree's nodes by depth (best value first), the best of each depth marked.

    Raises NotFoundError for a tree without nodes."""
    nodes = client.get_search_nodes(tree_id, order="value", limit=MAX_TREE_NODES)
    if not nodes:
        raise NotFoundError(f"search tree {tree_id!r} has no nodes")
    best = {node["node_id"] for node in client.get_best_per_depth(tree_id, 1)}
    depths: dict[int, list[dict[str, Any]]] = {}
    for node in nodes:
        depths.setdefault(node["depth"], []).append({**node, "best": node["node_id"] in best})
    return {
        "tree": tree_id,
        "node_count": len(nodes),
        "truncated": len(nodes) == MAX_TREE_NODES,
        "depths": [{"depth": depth, "nodes": depths[depth]} for depth in sorted(depths)],
    }


def status(client: DatabaseClient) -> dict[str, Any]:
    """Statistics, health, migrations, backups and the recovery window (read-only)."""
    backups = [
        {k: v for k, v in entry.items() if k in ("id", "timestamp", "size", "backend", "schema_version", "verified")}
        for entry in client.list_backups()
    ]
    return {
        "statistics": client.get_statistics(),
        "health": client.health_check(),
        "migrations": client.get_migration_status(),
        "backups": backups,
        "recovery_window": client.recovery_window(),
    }
