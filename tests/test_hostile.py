"""Hostile input (hypothesis): every bad value gets the same typed error on both backends and
nothing is written; odd but valid values (unicode, SQL-looking text) round-trip exactly."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fle_db import DatabaseClient, NotFoundError, ValidationError
from fle_db.models import ID_PATTERN

_ids = itertools.count()
_deep: Any = "x"
for _ in range(300):
    _deep = {"d": _deep}

bad_values = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 2**64, -(2**70)]),
    st.text(max_size=20).map(lambda s: s + "\x00"),
    st.lists(st.integers(), max_size=3).map(tuple),
    st.sets(st.integers(), max_size=3),
    st.just(b"raw bytes"),
    st.just(object()),
    st.just(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)),
    st.just(uuid.UUID(int=1)),
    st.just(Decimal("1.5")),
    st.just(_deep),
    st.text(max_size=5).map(lambda s: s + "\ud800"),
    st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2),
)
bad_ids = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: __import__("re").fullmatch(ID_PATTERN, s) is None),
    st.sampled_from(["'; DROP TABLE steps; --", 'x" OR 1=1', "a b", "ü", "", "x" * 201, "t\x00", "0\n"]),
    st.integers(),
    st.none(),
)
odd_but_valid = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=0, max_size=30
) | st.sampled_from(["'; DROP TABLE steps; --", "\u202eRTL", "e\u0301", "🏭⚙️", "\\u0000 (escaped, not NUL)"])

_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_settings
@given(value=bad_values, where=st.sampled_from(["step", "agent_output", "game_state", "metadata", "trajectory"]))
def test_every_bad_value_is_a_validation_error_and_nothing_is_written(
    db: DatabaseClient, value: Any, where: str
) -> None:
    tid = f"h{next(_ids)}"
    step = {"trajectory_id": tid, "step_number": 0}
    with pytest.raises(ValidationError):
        if where == "step":
            db.save_step({**step, "observation": {"v": [value]}})
        elif where == "agent_output":
            db.save_step(step, agent_output={"code": value})
        elif where == "game_state":
            db.save_step(step, game_state={"v": value})
        elif where == "metadata":
            db.save_metadata(tid, "k", {"v": value})
        else:
            db.save_trajectory({"id": tid, "notes": value})
    with pytest.raises(NotFoundError):
        db.load_trajectory(tid)


@_settings
@given(bad=bad_ids)
def test_every_bad_id_or_metadata_key_is_a_validation_error(db: DatabaseClient, bad: Any) -> None:
    with pytest.raises(ValidationError):
        db.save_step({"trajectory_id": bad, "step_number": 0})
    with pytest.raises(ValidationError):
        db.save_metadata("fine", bad, 1)
    with pytest.raises(ValidationError):
        db.load_steps(bad)


@_settings
@given(text=odd_but_valid)
def test_odd_but_valid_text_round_trips_exactly(db: DatabaseClient, text: str) -> None:
    tid = f"u{next(_ids)}"
    db.save_step({"trajectory_id": tid, "step_number": 0, "action": text}, game_state={text: text})
    db.save_metadata(tid, "note", text)
    [step] = db.load_steps(tid)
    assert step["action"] == text
    assert db.load_game_state(step["game_state_id"]) == {text: text}
    assert db.load_metadata(tid) == {"note": text}


def test_a_huge_payload_is_refused_before_anything_is_written(db_url: str) -> None:
    with DatabaseClient(db_url, max_payload_bytes=1 << 20) as db:
        with pytest.raises(ValidationError, match="max_payload_bytes"):
            db.save_step({"trajectory_id": "big", "step_number": 0}, game_state={"blob": "z" * (2 << 20)})
        with pytest.raises(NotFoundError):
            db.load_trajectory("big")
