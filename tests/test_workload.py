"""The FLE-like workload generator: deterministic, sized and shaped like FLE's data."""

from __future__ import annotations

import orjson
import pytest

from fle_db.workload import Workload


def _bytes(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_the_same_seed_gives_byte_identical_data_in_any_order() -> None:
    forward = [_bytes(Workload(3).checkpoint(t, n)) for t in range(3) for n in range(6)]
    backward_gen = Workload(3, cache_trajectories=1)
    backward = {(t, n): _bytes(backward_gen.checkpoint(t, n)) for t in reversed(range(3)) for n in reversed(range(6))}
    assert forward == [backward[t, n] for t in range(3) for n in range(6)]
    assert _bytes(Workload(4).checkpoint(0, 0)) != forward[0]


def test_checkpoints_have_fle_like_sizes_and_a_rarely_changing_research_tree() -> None:
    work = Workload(0)
    states = [work.game_state(0, n) for n in range(50)]
    steps = [work.step_record(0, n) for n in range(50)]
    assert 45_000 < sum(len(_bytes(s)) for s in states) / 50 < 65_000
    assert 3_000 < sum(len(_bytes(s)) for s in steps) / 50 < 7_000
    assert len({_bytes(s["research"]) for s in states}) <= 12
    assert len(states[49]["entities"]) > len(states[0]["entities"])
    assert set(states[0]) >= {"entities", "inventories", "research", "timestamp", "namespaces", "agent_messages"}


def test_negative_positions_are_rejected() -> None:
    with pytest.raises(ValueError, match="step_number"):
        Workload(0).game_state(0, -1)
