"""The client API of the spec and its promises, on every backend, through both clients: every test
here runs against ``DatabaseClient`` and against ``AsyncDatabaseClient`` (driven through
``tests/async_adapter.py``), except the one that opens a client of its own with other options
(which runs through both as well, via ``client_factory``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from async_adapter import CLIENT_KINDS, client_factory, open_client

from fle_db import (
    ConflictError,
    DatabaseClient,
    DependencyError,
    NotFoundError,
    PayloadTooLargeError,
    Step,
    Trajectory,
    ValidationError,
)

SPEC_TRAJECTORY = {
    "id": "trajectory_001",
    "agent_type": "MyAgent",
    "task": "iron_ore_throughput",
    "start_time": "2024-01-01T00:00:00Z",
    "end_time": "2024-01-01T01:00:00Z",
    "total_reward": 150.0,
    "success": True,
}
STATE = {"entities": "eJzLSM3JyVcozy/KSQEAGgQEXQ==", "research": {"automation": {"researched": True}}, "tick": 60}


@pytest.fixture(params=CLIENT_KINDS)
def client_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(client_kind: str, db_url: str) -> Iterator[Any]:
    yield from open_client(client_kind, db_url)


def step(n: int, tid: str = "t1", **extra: object) -> dict[str, object]:
    return {"trajectory_id": tid, "step_number": n, "action": f"craft({n})", "reward": float(n), **extra}


# -- trajectories ------------------------------------------------------------------------------
def test_saved_trajectory_loads_back_equal(db: DatabaseClient) -> None:
    assert db.save_trajectory(SPEC_TRAJECTORY) == "trajectory_001"
    assert db.load_trajectory("trajectory_001") == SPEC_TRAJECTORY


def test_saving_a_trajectory_again_merges_the_new_keys(db: DatabaseClient) -> None:
    db.save_trajectory({"id": "r", "agent_type": "A", "task": "t", "total_reward": 0})
    db.save_trajectory({"id": "r", "end_time": "2024-01-01T02:00:00Z", "total_reward": 12.5, "success": False})
    assert db.load_trajectory("r") == {
        "id": "r",
        "agent_type": "A",
        "task": "t",
        "end_time": "2024-01-01T02:00:00Z",
        "total_reward": 12.5,
        "success": False,
    }


def test_pydantic_models_are_accepted_like_dicts(db: DatabaseClient) -> None:
    db.save_trajectory(Trajectory(id="m", task="iron", notes={"k": [1, 2]}))
    db.save_step(Step(trajectory_id="m", step_number=0, action="x"))
    assert db.load_trajectory("m") == {"id": "m", "task": "iron", "notes": {"k": [1, 2]}}
    assert db.load_steps("m")[0]["action"] == "x"


def test_unknown_trajectory_raises_not_found(db: DatabaseClient) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        db.load_trajectory("nope")
    for load in (db.load_steps, db.load_agent_outputs, db.load_environment_feedbacks, db.load_metadata):
        with pytest.raises(NotFoundError):
            load("nope")


# -- steps and checkpoints ---------------------------------------------------------------------
def test_steps_load_in_step_order_with_game_state_id(db: DatabaseClient) -> None:
    for n in (2, 0, 1):
        db.save_step(step(n))
    ids = db.save_step(step(3), game_state=STATE)
    loaded = db.load_steps("t1")
    assert [s["step_number"] for s in loaded] == [0, 1, 2, 3]
    assert [s["game_state_id"] for s in loaded[:3]] == [None, None, None]
    assert loaded[3]["game_state_id"] == ids["game_state_id"]
    assert db.load_game_state(ids["game_state_id"]) == STATE
    assert loaded[2] == {**step(2), "game_state_id": None}


def test_save_step_stores_the_whole_checkpoint_and_returns_its_ids(db: DatabaseClient) -> None:
    ids = db.save_step(
        step(1),
        agent_output={"code": "print(1)", "model": "m"},
        environment_feedback={"stdout": "1", "error": None},
        game_state=STATE,
    )
    assert ids["trajectory_id"] == "t1" and ids["step_number"] == 1 and ids["created"] is True
    assert isinstance(ids["game_state_id"], str)
    assert db.load_agent_outputs("t1") == [{"trajectory_id": "t1", "step_number": 1, "code": "print(1)", "model": "m"}]
    assert db.load_environment_feedbacks("t1") == [
        {"trajectory_id": "t1", "step_number": 1, "stdout": "1", "error": None}
    ]
    assert db.load_latest_checkpoint("t1") == {
        "step": {**step(1), "game_state_id": ids["game_state_id"]},
        "agent_output": {"code": "print(1)", "model": "m"},
        "environment_feedback": {"stdout": "1", "error": None},
        "game_state": STATE,
    }


def test_checkpoint_parts_may_be_entries_of_the_step(db: DatabaseClient) -> None:
    ids = db.save_step({**step(1), "game_state": STATE, "agent_output": {"code": "x"}})
    assert db.load_game_state(ids["game_state_id"]) == STATE
    assert db.load_agent_outputs("t1")[0]["code"] == "x"
    assert "game_state" not in db.load_steps("t1")[0]


def test_latest_checkpoint_is_the_highest_step_number_not_the_last_written(db: DatabaseClient) -> None:
    db.save_step(step(5), game_state={"at": 5})
    db.save_step(step(3), game_state={"at": 3})
    latest = db.load_latest_checkpoint("t1")
    assert latest is not None
    assert latest["step"]["step_number"] == 5 and latest["game_state"] == {"at": 5}


def test_latest_checkpoint_is_none_for_a_saved_trajectory_without_steps_and_not_found_for_an_unsaved_one(
    db: DatabaseClient,
) -> None:
    with pytest.raises(NotFoundError, match=r"'never-saved' does not exist.*save_trajectory"):
        db.load_latest_checkpoint("never-saved")
    db.save_trajectory({"id": "empty"})
    assert db.load_latest_checkpoint("empty") is None
    db.save_step(step(0, tid="nostate"))
    assert db.load_latest_checkpoint("nostate") == {
        "step": {**step(0, tid="nostate"), "game_state_id": None},
        "agent_output": None,
        "environment_feedback": None,
        "game_state": None,
    }


def test_steps_for_an_unsaved_trajectory_are_accepted(db: DatabaseClient) -> None:
    db.batch_save_steps([{"trajectory_id": "t9", "step_number": i, "action": f"action{i}"} for i in (1, 2, 3)])
    assert db.load_trajectory("t9") == {"id": "t9"}
    db.save_trajectory({"id": "t9", "task": "later"})
    assert db.load_trajectory("t9") == {"id": "t9", "task": "later"}
    assert len(db.load_steps("t9")) == 3


# -- idempotency and conflicts -----------------------------------------------------------------
def test_saving_an_identical_checkpoint_twice_is_a_no_op(db: DatabaseClient) -> None:
    first = db.save_step(step(1), agent_output={"code": "c"}, game_state=STATE)
    again = db.save_step(step(1), agent_output={"code": "c"}, game_state=STATE)
    assert first["created"] is True and again["created"] is False
    assert first["game_state_id"] == again["game_state_id"]
    assert len(db.load_steps("t1")) == 1 and len(db.load_agent_outputs("t1")) == 1


def test_a_different_step_under_the_same_key_conflicts_and_changes_nothing(db: DatabaseClient) -> None:
    db.save_step(step(1))
    with pytest.raises(ConflictError, match="step 1 of trajectory 't1'"):
        db.save_step(step(1, action="other"), agent_output={"code": "new"})
    assert db.load_steps("t1") == [{**step(1), "game_state_id": None}]
    assert db.load_agent_outputs("t1") == []


def test_the_same_step_with_another_game_state_conflicts(db: DatabaseClient) -> None:
    db.save_step(step(1), game_state={"v": 1})
    with pytest.raises(ConflictError):
        db.save_step(step(1), game_state={"v": 2})


def test_a_batch_retried_after_a_lost_reply_is_a_no_op(db: DatabaseClient) -> None:
    batch = [step(i, game_state={"i": i}) for i in range(5)]
    db.batch_save_steps(batch)
    results = db.batch_save_steps([*batch, step(5)])
    assert [r["created"] for r in results] == [False] * 5 + [True]
    assert [s["step_number"] for s in db.load_steps("t1")] == list(range(6))


def test_a_batch_with_one_conflicting_record_writes_nothing(db: DatabaseClient) -> None:
    db.save_step(step(2))
    with pytest.raises(ConflictError):
        db.batch_save_steps([step(0), step(1, game_state={"x": 1}), step(2, action="different"), step(3)])
    assert [s["step_number"] for s in db.load_steps("t1")] == [2]


def test_a_batch_with_one_invalid_record_writes_nothing_and_names_it(db: DatabaseClient) -> None:
    with pytest.raises(ValidationError, match="batch element 2"):
        db.batch_save_steps([step(0), step(1), step(2, reward=float("nan")), step(3)])
    with pytest.raises(NotFoundError):
        db.load_steps("t1")


def test_a_batch_repeating_one_key_with_different_content_conflicts(db: DatabaseClient) -> None:
    with pytest.raises(ConflictError):
        db.batch_save_steps([step(0), step(0, action="twin")])
    with pytest.raises(NotFoundError):
        db.load_steps("t1")


def test_agent_output_of_another_step_is_rejected(db: DatabaseClient) -> None:
    with pytest.raises(ValidationError, match="step_number"):
        db.save_step(step(1), agent_output={"step_number": 2, "code": "x"})


def test_standalone_outputs_and_feedbacks_are_idempotent(db: DatabaseClient) -> None:
    out = {"trajectory_id": "t1", "step_number": 0, "code": "x"}
    assert db.save_agent_output(out)["created"] is True
    assert db.save_agent_output(out)["created"] is False
    with pytest.raises(ConflictError):
        db.save_agent_output({**out, "code": "y"})
    fb = {"trajectory_id": "t1", "step_number": 0, "stdout": "ok"}
    db.save_environment_feedback(fb)
    assert db.load_environment_feedbacks("t1") == [fb]


# -- game states -------------------------------------------------------------------------------
def test_game_states_are_content_addressed(db: DatabaseClient) -> None:
    a = db.save_game_state(STATE)
    b = db.save_game_state(dict(reversed(list(STATE.items()))))
    assert a == b
    assert db.load_game_state(a) == STATE
    assert db.save_game_state({**STATE, "tick": 61}) != a


def test_unknown_game_state_raises_not_found(db: DatabaseClient) -> None:
    with pytest.raises(NotFoundError):
        db.load_game_state("0" * 32)


def test_game_state_must_be_an_object(db: DatabaseClient) -> None:
    with pytest.raises(ValidationError, match="JSON object"):
        db.save_game_state([1, 2])  # type: ignore[arg-type]


# -- metadata ----------------------------------------------------------------------------------
def test_metadata_round_trips_and_overwrites(db: DatabaseClient) -> None:
    db.save_metadata("t1", "model", "gpt-x")
    db.save_metadata("t1", "seed", 7)
    db.save_metadata("t1", "model", {"name": "gpt-y", "temperature": 0.5})
    assert db.load_metadata("t1") == {"model": {"name": "gpt-y", "temperature": 0.5}, "seed": 7}
    db.save_trajectory({"id": "bare"})
    assert db.load_metadata("bare") == {}


# -- lineage and deletion ----------------------------------------------------------------------
def test_a_fork_must_name_an_existing_step(db: DatabaseClient) -> None:
    db.save_step(step(0))
    with pytest.raises(NotFoundError, match="step 7"):
        db.save_trajectory({"id": "f", "parent_trajectory_id": "t1", "parent_step_number": 7})
    db.save_trajectory({"id": "f", "parent_trajectory_id": "t1", "parent_step_number": 0})
    with pytest.raises(DependencyError, match="lineage"):
        db.save_trajectory({"id": "f", "parent_trajectory_id": "t1", "parent_step_number": 1})


def test_lineage_cycles_are_refused(db: DatabaseClient) -> None:
    db.save_step(step(0, tid="a"))
    db.save_trajectory({"id": "b", "parent_trajectory_id": "a", "parent_step_number": 0})
    db.save_step(step(0, tid="b"))
    with pytest.raises(DependencyError, match="cycle"):
        db.save_trajectory({"id": "a", "parent_trajectory_id": "b", "parent_step_number": 0})


def test_delete_removes_everything_that_belongs_only_to_the_trajectory(db: DatabaseClient) -> None:
    shared = db.save_step(step(0, tid="keep"), game_state=STATE)["game_state_id"]
    own = db.save_step(step(0), game_state={"own": True}, agent_output={"c": 1}, environment_feedback={"o": 1})[
        "game_state_id"
    ]
    db.save_step(step(1), game_state=STATE)
    db.save_metadata("t1", "k", "v")
    assert db.delete_trajectory("t1") == ["t1"]
    for load in (db.load_trajectory, db.load_steps, db.load_metadata, db.load_agent_outputs):
        with pytest.raises(NotFoundError):
            load("t1")
    with pytest.raises(NotFoundError):
        db.load_game_state(own)
    assert db.load_game_state(shared) == STATE
    with pytest.raises(NotFoundError):
        db.delete_trajectory("t1")


def test_delete_refuses_while_a_fork_depends_unless_cascading(db: DatabaseClient) -> None:
    db.save_step(step(0))
    db.save_trajectory({"id": "fork", "parent_trajectory_id": "t1", "parent_step_number": 0})
    db.save_step(step(1, tid="fork"))
    db.save_trajectory({"id": "fork2", "parent_trajectory_id": "fork", "parent_step_number": 1})
    with pytest.raises(DependencyError, match="fork"):
        db.delete_trajectory("t1")
    assert db.load_trajectory("t1")["id"] == "t1"
    assert sorted(db.delete_trajectory("t1", cascade=True)) == ["fork", "fork2", "t1"]
    with pytest.raises(NotFoundError):
        db.load_trajectory("fork2")


def test_a_step_whose_parent_is_in_another_trajectory_is_a_dependent(db: DatabaseClient) -> None:
    db.save_step(step(0))
    db.save_step(step(1, tid="branch", parent_trajectory_id="t1", parent_step_number=0))
    with pytest.raises(DependencyError):
        db.delete_trajectory("t1")


# -- bad input ---------------------------------------------------------------------------------
BAD_STEPS = [
    ({"step_number": 1}, "trajectory_id"),
    ({"trajectory_id": "t"}, "step_number"),
    ({"trajectory_id": "t", "step_number": "1"}, "step_number"),
    ({"trajectory_id": "t", "step_number": True}, "step_number"),
    ({"trajectory_id": "t", "step_number": -1}, "step_number"),
    ({"trajectory_id": "t", "step_number": 2**63}, "step_number"),
    ({"trajectory_id": "t", "step_number": 1, "reward": "high"}, "reward"),
    ({"trajectory_id": "t", "step_number": 1, "reward": float("nan")}, "NaN"),
    ({"trajectory_id": "t", "step_number": 1, "observation": {"x": float("inf")}}, "infinity"),
    ({"trajectory_id": "t", "step_number": 1, "action": "a\x00b"}, "NUL"),
    ({"trajectory_id": "t", "step_number": 1, "observation": {1: "int key"}}, "non-string key"),
    ({"trajectory_id": "t", "step_number": 1, "observation": (1, 2)}, "tuple"),
    ({"trajectory_id": "t", "step_number": 1, "observation": {1, 2}}, "set"),
    ({"trajectory_id": "t", "step_number": 1, "observation": object()}, "object"),
    ({"trajectory_id": "t", "step_number": 1, "observation": "\ud800"}, "surrogate"),
    ({"trajectory_id": "t", "step_number": 1, "observation": 2**70}, "64-bit"),
    ({"trajectory_id": "t'; DROP TABLE steps; --", "step_number": 1}, "trajectory_id"),
    ({"trajectory_id": 'say "hi"', "step_number": 1}, "trajectory_id"),
    ({"trajectory_id": "", "step_number": 1}, "trajectory_id"),
    ({"trajectory_id": "x" * 201, "step_number": 1}, "trajectory_id"),
]


@pytest.mark.parametrize(("record", "named"), BAD_STEPS, ids=[n for _, n in BAD_STEPS])
def test_bad_step_raises_a_typed_error_naming_the_problem_and_writes_nothing(
    db: DatabaseClient, record: dict[str, object], named: str
) -> None:
    with pytest.raises(ValidationError, match=named):
        db.save_step(record)
    with pytest.raises(ValidationError):
        db.batch_save_steps([step(0, tid="ok"), record])
    with pytest.raises(NotFoundError):
        db.load_steps("ok")


def test_deeply_nested_json_is_rejected(db: DatabaseClient) -> None:
    deep: object = "leaf"
    for _ in range(300):
        deep = [deep]
    with pytest.raises(ValidationError, match=r"nest|recursion|depth"):
        db.save_step(step(0, observation=deep))


def test_oversize_payload_raises_and_names_the_limit(client_kind: str, db_url: str) -> None:
    with client_factory(client_kind)(db_url, max_payload_bytes=4096) as small:
        with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
            small.save_step(step(0, observation="x" * 5000))
        with pytest.raises(PayloadTooLargeError):
            small.save_step(step(0), game_state={"blob": "y" * 5000})
        with pytest.raises(NotFoundError):
            small.load_steps("t1")


@pytest.mark.parametrize("bad_id", ["a b", "x'--", "é", None, 7])
def test_malformed_ids_are_rejected_by_every_method(db: DatabaseClient, bad_id: object) -> None:
    calls = [
        lambda: db.load_trajectory(bad_id),  # type: ignore[arg-type]
        lambda: db.load_steps(bad_id),  # type: ignore[arg-type]
        lambda: db.load_latest_checkpoint(bad_id),  # type: ignore[arg-type]
        lambda: db.load_game_state(bad_id),  # type: ignore[arg-type]
        lambda: db.save_metadata("t", bad_id, 1),  # type: ignore[arg-type]
        lambda: db.save_metadata(bad_id, "k", 1),  # type: ignore[arg-type]
        lambda: db.delete_trajectory(bad_id),  # type: ignore[arg-type]
        lambda: db.save_trajectory({"id": bad_id}),
    ]
    for call in calls:
        with pytest.raises(ValidationError):
            call()


def test_non_dict_records_are_rejected(db: DatabaseClient) -> None:
    for call in (
        lambda: db.save_step(["t", 1]),
        lambda: db.save_trajectory("t"),  # type: ignore[arg-type]
        lambda: db.batch_save_steps([None]),
    ):  # type: ignore[list-item]
        with pytest.raises(ValidationError, match="must be a dict"):
            call()
