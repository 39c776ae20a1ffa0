"""What you save is what you load: every key given comes back equal and of the same type."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fle_db import DatabaseClient

_ids = itertools.count()

_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=_chars, max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(_chars, max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
extra_keys = st.dictionaries(
    st.text(_chars, min_size=1, max_size=12).filter(
        lambda k: (
            k
            not in {
                "trajectory_id",
                "step_number",
                "game_state",
                "agent_output",
                "environment_feedback",
                "reward",
                "timestamp",
                "parent_trajectory_id",
                "parent_step_number",
                "id",
                "agent_type",
                "task",
                "start_time",
                "end_time",
                "total_reward",
                "success",
            }
        )
    ),
    json_values,
    max_size=6,
)
numbers = st.integers(min_value=-(10**12), max_value=10**12) | st.floats(allow_nan=False, allow_infinity=False)


def assert_same(saved: Any, loaded: Any, path: str = "") -> None:
    """Equal and of the same type, recursively (``1 == 1.0 == True`` would hide a type change)."""
    assert type(saved) is type(loaded), f"{path}: {type(saved).__name__} came back as {type(loaded).__name__}"
    if isinstance(saved, dict):
        assert saved.keys() == loaded.keys(), path
        for key in saved:
            assert_same(saved[key], loaded[key], f"{path}[{key!r}]")
    elif isinstance(saved, list):
        assert len(saved) == len(loaded), path
        for i, (a, b) in enumerate(zip(saved, loaded, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert saved == loaded or (saved != saved and loaded != loaded), path


def assert_given_keys_come_back(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    for key, value in saved.items():
        assert key in loaded, key
        assert_same(value, loaded[key], key)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    extra=extra_keys,
    reward=st.none() | numbers,
    state=st.dictionaries(st.text(_chars, max_size=10), json_values, max_size=6),
    output=extra_keys,
    feedback=extra_keys,
    trajectory=extra_keys,
    total=st.none() | numbers,
    meta=json_values,
)
def test_every_saved_key_loads_back_equal_and_of_the_same_type(
    db: DatabaseClient,
    extra: dict[str, Any],
    reward: Any,
    state: dict[str, Any],
    output: dict[str, Any],
    feedback: dict[str, Any],
    trajectory: dict[str, Any],
    total: Any,
    meta: Any,
) -> None:
    tid = f"prop-{next(_ids)}"
    traj = {"id": tid, "total_reward": total, **trajectory}
    db.save_trajectory(traj)
    assert_given_keys_come_back(traj, db.load_trajectory(tid))

    step = {"trajectory_id": tid, "step_number": 0, "reward": reward, **extra}
    ids = db.save_step(step, agent_output=output, environment_feedback=feedback, game_state=state)
    [loaded] = db.load_steps(tid)
    assert_given_keys_come_back(step, loaded)
    assert loaded["game_state_id"] == ids["game_state_id"]
    assert_same(state, db.load_game_state(ids["game_state_id"]))
    latest = db.load_latest_checkpoint(tid)
    assert latest is not None
    assert_same(state, latest["game_state"])
    assert_given_keys_come_back(output, db.load_agent_outputs(tid)[0])
    assert_given_keys_come_back(feedback, db.load_environment_feedbacks(tid)[0])

    db.save_metadata(tid, "value", meta)
    assert_same(meta, db.load_metadata(tid)["value"])
    assert db.save_step(step, agent_output=output, environment_feedback=feedback, game_state=state)["created"] is False
