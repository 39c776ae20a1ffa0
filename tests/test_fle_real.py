"""Proof against FLE's own code (issue 8 item 3): programs built with FLE 0.4.3's real ``Program``,
``GameState`` and ``Conversation`` go create → resume → beam heads → sample → update on every
backend (SQLite, PostgreSQL, MySQL/MariaDB), and ``FLEDBClient`` has the method names,
parameters and async-ness of FLE's client.

Needs ``pip install -e '.[fle]'`` (factorio-learning-environment 0.4.3): skipped without it,
except under ``CI=true``, where a missing FLE fails the run (CI must never pass by skipping).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ALL_BACKENDS

if os.environ.get("CI") == "true":
    from fle.commons.models.program import Program  # CI installs the [fle] extra: fail, never skip
else:
    Program = pytest.importorskip(
        "fle.commons.models.program", reason="FLE not installed: pip install -e '.[fle]'"
    ).Program

from fle.commons.models.conversation import Conversation
from fle.commons.models.game_state import GameState
from fle.commons.models.research_state import ResearchState
from fle.commons.models.technology_state import TechnologyState
from fle.commons.models.timing_metrics import TimingMetrics

from fle_db import AsyncDatabaseClient
from fle_db.fle import FLEDBClient


class _Marker:
    """Unpickling this would raise: proves fle-db never unpickles a namespace."""

    def __reduce__(self) -> Any:
        return (_refuse, ())


def _refuse() -> None:
    raise AssertionError("a namespace was unpickled")


def game_state(step: int) -> GameState:
    technologies = {
        f"tech-{i}": TechnologyState(
            name=f"tech-{i}",
            researched=i < step,
            enabled=True,
            level=1,
            research_unit_count=10 * i,
            research_unit_energy=30.0,
            prerequisites=[f"tech-{i - 1}"] if i else [],
            ingredients=[{"automation-science-pack": 1}],
        )
        for i in reversed(range(60))  # not sorted: the order must survive
    }
    return GameState(
        entities=f"eJzLSM3JyQcABiwCFQ=={step}",
        inventories=[{"iron-plate": 5 + step, "coal": 2}],
        research=ResearchState(
            technologies=technologies,
            current_research="tech-3",
            research_progress=0.25,
            research_queue=["tech-3", "tech-4"],
            progress={"tech-3": 0.25},
        ),
        namespaces=[pickle.dumps(_Marker()), b""],
        agent_messages=[[{"sender": "agent-1", "message": f"step {step}"}]],
    )


def conversation(step: int) -> Conversation:
    conv = Conversation()
    conv.set_system_message("You are an agent in Factorio.")
    for i in range(step + 1):
        conv.add_user_message(f"observation {i}", tick=i)
        conv.add_agent_message(f"place_entity(Prototype.Drill)  # {i}")
    return conv


def make_program(step: int, instance: int = 0, parent_id: int | None = None, value: float = 1.0) -> Program:
    return Program(
        code=f"print({step})",
        conversation=conversation(step),
        value=value,
        parent_id=parent_id,
        state=game_state(step),
        raw_reward=value / 2,
        prompt_token_usage=100,
        completion_token_usage=20,
        token_usage=120,
        response=f"ok {step}",
        version=42,
        version_description="model: test\nbeam",
        model="test-model",
        meta={"process_id": 1, "error_occurred": False},
        achievements={"static": {"iron-plate": step}, "dynamic": {}},
        instance=instance,
        depth=2 * step,
        advantage=0.1 * step,
        ticks=60 * step,
        timing_metrics=[TimingMetrics(operation_name="step", start_time=1.0, end_time=2.5)],
    )


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite, PostgreSQL and MySQL/MariaDB (FLE's drop-in promise)."""
    return str(request.param)


@pytest.fixture
def fle(db_url: str) -> Iterator[FLEDBClient]:
    """The client; the test's event loop closes it (``cleanup``) before that loop ends."""
    yield FLEDBClient(AsyncDatabaseClient(db_url))


def test_fles_own_programs_round_trip_create_resume_beam_sample_update(fle: FLEDBClient) -> None:
    async def scenario() -> None:
        originals = []
        parent_id = None
        for step in range(4):
            original = make_program(step, parent_id=parent_id, value=float(step))
            raw = original.state.to_raw()
            saved = await fle.create_program(original)
            assert saved is original and isinstance(saved.id, int)  # FLE's contract: id set in place
            parent_id = saved.id
            originals.append((saved, raw))
        side = await fle.create_program(make_program(1, instance=1, parent_id=originals[0][0].id, value=10.0))

        # Resume: FLE's tuple, with FLE's classes, the newest step of (version, instance).
        state, conv, program_id, depth = await fle.get_resume_state(42, 1, 0)
        last, last_raw = originals[-1]
        assert isinstance(state, GameState) and isinstance(conv, Conversation)
        assert state.to_raw() == last_raw  # byte-identical game state
        assert state.namespaces == last.state.namespaces  # opaque bytes, never unpickled
        assert conv == last.conversation
        assert (program_id, depth) == (last.id, last.depth // 2)  # FLE reads back depth / 2

        # Beam heads: real Programs, best first, equal to what was created.
        heads = await fle.get_beam_heads(42, 2)
        assert all(isinstance(h, Program) for h in heads)
        assert [h.id for h in heads] == [side.id, last.id]
        head = heads[1]
        for name in Program.model_fields:
            if name not in ("state", "created_at", "visits", "depth"):
                assert getattr(head, name) == getattr(last, name), name
        assert head.state.to_raw() == last_raw and head.parent_id == originals[2][0].id
        assert head.depth == last.depth // 2

        # Sample: a real Program from the version.
        sampled = await fle.sample_parent(version=42)
        assert isinstance(sampled, Program) and sampled.id in {p.id for p, _ in originals} | {side.id}

        # Update: search statistics change atomically; the program comes back as a Program.
        updated = await fle.update_program(last.id, {"visits": 5, "value": 99.0})
        assert isinstance(updated, Program) and (updated.visits, updated.value) == (5, 99.0)
        assert (await fle.get_beam_heads(42, 1))[0].id == last.id

        assert await fle.get_version_metadata(42) == {"version_description": "model: test\nbeam", "model": "test-model"}
        assert await fle.get_largest_depth_in_version(42) == 3

    async def closing() -> None:
        try:
            await scenario()
        finally:
            await fle.cleanup()

    asyncio.run(closing())


def test_the_client_has_fles_method_names_parameters_and_async_ness() -> None:
    """Compared with FLE's DBClient and SQLliteDBClient in a child process (importing FLE's
    db_client configures the root logger, which must not leak into this test session)."""
    code = """
import inspect, json
from fle.commons import db_client
out = {}
for cls in (db_client.DBClient, db_client.SQLliteDBClient, db_client.PostgresDBClient):
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if not name.startswith("_"):
            out[name] = [inspect.iscoroutinefunction(fn), list(inspect.signature(fn).parameters)[1:]]
out["create_db_client"] = [True, list(inspect.signature(db_client.create_db_client).parameters)]
out["get_next_version"] = [True, list(inspect.signature(db_client.get_next_version).parameters)]
print(json.dumps(out))
"""
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    fle_api = json.loads(child.stdout)

    from fle_db import fle as ours

    for name, (is_async, params) in fle_api.items():
        target = getattr(ours, name, None) if name in ("create_db_client", "get_next_version") else None
        target = target or getattr(ours.FLEDBClient, name)
        assert inspect.iscoroutinefunction(target) == is_async, name
        our_params = list(inspect.signature(target).parameters)
        our_params = our_params[1:] if our_params and our_params[0] == "self" else our_params
        assert our_params[: len(params)] == params, (name, our_params, params)
