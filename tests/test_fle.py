"""``fle_db.fle``, FLE's client API, with plain-dict programs (FLE not needed), on every backend
(SQLite, PostgreSQL, MySQL/MariaDB): create → resume → beam heads → sample → update, explicit
resume, read-only parameterised queries, atomic versions, and async calls that never block the event loop."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ALL_BACKENDS
from fle_support import use_fle_environment
from hypothesis import given, settings
from hypothesis import strategies as st

from fle_db import AsyncDatabaseClient, DatabaseClient
from fle_db.errors import NotFoundError, ValidationError
from fle_db.fle import FLEDBClient, ResumePoint, _key_order, _reordered, create_db_client, get_next_version

#: A to_raw()-shaped state, keys deliberately not sorted (FLE's own order).
STATE = {
    "entities": "eJzLSM3JyQcABiwCFQ==",
    "inventories": [{"iron-plate": 5, "coal": 2}],
    "timestamp": 1795810143.8575885,
    "namespaces": [pickle.dumps({"x": 1}).hex(), ""],
    "agent_messages": [],
    "research": {
        "technologies": {
            f"tech-{i}": {"name": f"tech-{i}", "researched": i % 2 == 0, "level": 1, "prerequisites": ["b", "a"]}
            for i in reversed(range(40))
        },
        "current_research": None,
        "research_progress": 0.25,
        "research_queue": [],
        "progress": {},
    },
}


def program(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "code": "print(inspect_inventory())",
        "conversation": {"messages": [{"role": "user", "content": "hi", "metadata": {}}]},
        "value": 1.0,
        "state": json.dumps(STATE),
        "version": 3,
        "instance": 0,
        "depth": 2,
        "advantage": 0.0,
        "model": "gpt-4o",
        "version_description": "beam test",
        "meta": {"process_id": 7},
    }
    return {**base, **fields}


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite, PostgreSQL and MySQL/MariaDB (FLE's drop-in promise)."""
    return str(request.param)


_loop: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(autouse=True)
def event_loop() -> Iterator[None]:
    """One event loop per test, for every ``run``: the asyncio client belongs to the loop it
    first ran on (as FLE runs: one loop per process)."""
    _loop.append(asyncio.new_event_loop())
    yield
    _loop.pop().close()


def run(coro: Any) -> Any:
    return _loop[-1].run_until_complete(coro)


@pytest.fixture
def fle(db_url: str) -> Iterator[FLEDBClient]:
    client = FLEDBClient(AsyncDatabaseClient(db_url), return_programs=False)
    yield client
    run(client.cleanup())


def test_create_resume_beam_sample_update_round_trip(fle: FLEDBClient) -> None:
    async def scenario() -> None:
        root = await fle.create_program(program(value=1.0, depth=0))
        assert isinstance(root["id"], int) and root["created_at"] is not None
        child = await fle.create_program(program(value=3.0, depth=2, parent_id=root["id"], advantage=0.5))
        other = await fle.create_program(program(value=2.0, depth=2, instance=1, parent_id=root["id"]))

        state, conversation, program_id, depth = await fle.get_resume_state(3, 7, 0)
        assert (program_id, depth) == (child["id"], 1)  # FLE reads back depth / 2
        assert state == json.dumps(STATE)  # exactly the to_raw() text, key order included
        assert conversation == program()["conversation"]

        heads = await fle.get_beam_heads(3, 2)
        assert [(h["id"], h["value"], h["parent_id"]) for h in heads] == [
            (child["id"], 3.0, root["id"]),
            (other["id"], 2.0, root["id"]),
        ]
        assert heads[0]["code"] == program()["code"] and heads[0]["meta"] == {"process_id": 7}

        sampled = await fle.sample_parent(3, compression_strength=0.5)
        assert sampled["id"] in {root["id"], child["id"], other["id"]}

        updated = await fle.update_program(child["id"], {"visits": 4, "value": 9.5, "advantage": -1.0})
        assert (updated["visits"], updated["value"], updated["advantage"]) == (4, 9.5, -1.0)
        assert (await fle.get_beam_heads(3, 1))[0]["id"] == child["id"]

        assert await fle.get_largest_version() == 3
        assert await fle.get_largest_depth_in_version(3) == 1
        assert (await fle.version_exists(3), await fle.version_exists(4)) == (True, False)
        assert await fle.get_version_metadata(3) == {"version_description": "beam test", "model": "gpt-4o"}
        assert await fle.get_version_metadata(4) == {}
        assert sorted(await fle.get_all_program_rewards(3)) == [1.0, 2.0, 9.5]
        assert await fle.get_all_program_rewards(4) == []

    run(scenario())


def test_thinned_programs_are_never_offered_to_sample_resume_or_beam(fle: FLEDBClient) -> None:
    async def scenario() -> list[int]:
        made = []
        for i in range(7):
            state = json.dumps({**STATE, "timestamp": float(i)})  # a state of its own each
            made.append(await fle.create_program(program(value=float(i % 6), advantage=float(i), state=state)))
        made.append(await fle.create_program(program(value=-1.0, advantage=9.0, state=None)))
        return [p["id"] for p in made]

    ids = run(scenario())
    tid = run(fle.db.list_trajectories())["trajectories"][0]["id"]
    report = run(fle.db.thin(trajectory_ids=[tid], keep_every=1000, thin_search_nodes=True, keep_best_per_depth=1))
    # Kept: step 0 (a multiple of keep_every), the best of the depth (value 5: step 5), the latest
    # step with a state (6; the latest step, 7, has none).
    assert report["game_states"] == 4
    offered = {run(fle.sample_parent(3, compression_strength=0.5))["id"] for _ in range(60)}
    assert offered and offered <= {ids[0], ids[5], ids[6]}
    heads = run(fle.get_beam_heads(3, 10))
    assert {h["id"] for h in heads} == {ids[0], ids[5], ids[6]}
    state, _, program_id, _ = run(fle.get_resume_state(3, 7, 0))
    assert program_id == ids[6] and json.loads(state)["timestamp"] == 6.0


def test_resume_picks_the_highest_step_not_a_timestamp(fle: FLEDBClient) -> None:
    async def scenario() -> list[int]:
        ids = []
        for i in range(8):  # all within one second: FLE's ORDER BY created_at could pick any
            ids.append((await fle.create_program(program(value=float(i), depth=2 * i)))["id"])
        return ids

    ids = run(scenario())
    point = run(fle.resume(3, 0))
    assert point.found and (point.program_id, point.depth, point.step_number) == (ids[-1], 7, 7)


def test_resume_without_a_checkpoint_says_so(fle: FLEDBClient) -> None:
    assert run(fle.resume(5, 0)) == ResumePoint(
        False, None, None, None, None, None, "version 5 instance 0 has no checkpoint"
    )
    run(fle.create_program(program(version=5, state=None)))
    point = run(fle.resume(5, 0))
    assert not point.found and "none with a game state and a value" in str(point.reason)
    assert run(fle.get_resume_state(5, 1, 0)) == (None, None, None, None)  # FLE's shape for "start afresh"


def test_depth_reads_back_as_fle_stores_it_or_as_created(db_url: str) -> None:
    async def scenario() -> tuple[Any, Any, int]:
        async with AsyncDatabaseClient(db_url) as db:
            fle_way = FLEDBClient(db, return_programs=False)
            exact = FLEDBClient(db, return_programs=False, fle_depth=False)
            current_depth = 3  # FLE's beam search creates depth = current_depth * 2...
            await fle_way.create_program(program(depth=current_depth * 2))
            heads = await fle_way.get_beam_heads(3, 1)
            exact_heads = await exact.get_beam_heads(3, 1)
            return heads[0]["depth"], exact_heads[0]["depth"], await fle_way.get_largest_depth_in_version(3)

    fle_depth, created_depth, largest = run(scenario())
    assert (fle_depth, created_depth, largest) == (3, 6, 3)  # ...and resumes at the heads' depth


def test_update_program_changes_only_search_statistics(fle: FLEDBClient) -> None:
    created = run(fle.create_program(program()))
    with pytest.raises(ValidationError, match="code"):
        run(fle.update_program(created["id"], {"code": "x = 1"}))
    with pytest.raises(NotFoundError):
        run(fle.update_program(created["id"] + 100, {"value": 1.0}))
    with pytest.raises(NotFoundError):
        run(fle.create_program(program(parent_id=created["id"] + 100)))


def test_visit_counts_visits_and_sets_advantages(fle: FLEDBClient) -> None:
    async def scenario() -> list[dict[str, Any]]:
        parent = await fle.create_program(program())
        for value in (1.0, 3.0):
            await fle.create_program(program(parent_id=parent["id"], value=value, instance=1))
        await fle.visit(parent["id"], 2)
        return [await fle.update_program(parent["id"], {})] + await fle.get_beam_heads(3, 3)

    parent, *heads = run(scenario())
    assert parent["visits"] == 2
    assert sorted((h["value"], h["advantage"]) for h in heads if h["parent_id"]) == [(1.0, -1.0), (3.0, 1.0)]


def test_game_state_text_and_namespaces_come_back_unchanged(fle: FLEDBClient) -> None:
    raw = json.dumps(STATE)
    created = run(fle.create_program(program(state=raw)))
    head = run(fle.get_beam_heads(3, 1))[0]
    assert head["id"] == created["id"] and head["state"] == raw
    assert json.loads(head["state"])["namespaces"][0] == pickle.dumps({"x": 1}).hex()  # opaque, never unpickled


def test_execute_query_is_parameterised_and_refuses_writes(fle: FLEDBClient) -> None:
    created = run(fle.create_program(program(value=4.0)))
    rows = run(fle.execute_query("SELECT id, value FROM search_nodes WHERE tree = %s AND value > %s", ("fle-v3", 1)))
    assert rows == [{"id": created["id"], "value": 4.0}]
    assert run(fle.execute_query("SELECT 'a%%b' AS s WHERE 1 = %s", (1,))) == [{"s": "a%b"}]
    assert run(fle.execute_query("SELECT 'a%b' AS s")) == [{"s": "a%b"}]  # no parameters: % is literal
    with pytest.raises(ValidationError):
        run(fle.execute_query("SELECT * FROM no_such_table"))
    for attack in (
        "DELETE FROM search_nodes",
        "UPDATE search_nodes SET visits = 99",
        "SELECT 1; DELETE FROM search_nodes",
        "SELECT 1; COMMIT; DELETE FROM search_nodes",
        "INSERT INTO fle_versions (version, created_at) VALUES (99, 0)",
        "DROP TABLE fle_versions",
        "CREATE TABLE evil (x int)",
    ):
        with pytest.raises(ValidationError):
            run(fle.execute_query(attack))
    with pytest.raises(ValidationError):
        run(fle.execute_query("SELECT id FROM search_nodes WHERE id = %s; DELETE FROM search_nodes", (1,)))
    if fle.db.settings.backend == "sqlite":
        for attack in ("ATTACH DATABASE ':memory:' AS x", "PRAGMA query_only = 0"):
            with pytest.raises(ValidationError):
                run(fle.execute_query(attack))
    assert run(fle.execute_query("SELECT count(*) AS n FROM search_nodes")) == [{"n": 1}]
    # The pooled connection is writable again afterwards.
    run(fle.create_program(program()))
    assert run(fle.execute_query("SELECT count(*) AS n FROM search_nodes")) == [{"n": 2}]


def test_the_fle_programs_view_answers_analytics_the_same_on_both_backends(fle: FLEDBClient) -> None:
    async def scenario() -> list[dict[str, Any]]:
        root = await fle.create_program(program(value=2.0, instance=-1, depth=1))
        await fle.create_program(program(value=3.0, instance=12, depth=2, parent_id=root["id"], state=None))
        await fle.create_program(program(version=9, value=7.0))
        return await fle.execute_query(
            "SELECT id, version, instance, parent_id, depth, value, visits, has_state, model, version_description"
            " FROM fle_programs WHERE version = %s ORDER BY id",
            (3,),
        )

    rows = run(scenario())
    assert [{k: v for k, v in row.items() if k != "id"} for row in rows] == [
        {"version": 3, "instance": -1, "parent_id": None, "depth": 0, "value": 2.0, "visits": 0, "has_state": 1,
         "model": "gpt-4o", "version_description": "beam test"},
        {"version": 3, "instance": 12, "parent_id": rows[0]["id"], "depth": 1, "value": 3.0, "visits": 0,
         "has_state": 0, "model": "gpt-4o", "version_description": "beam test"},
    ]  # fmt: skip


def _allocate(env: dict[str, str], count: int, queue: Any) -> None:
    os.environ.update(env)

    async def allocate() -> list[int]:
        return [await get_next_version() for _ in range(count)]

    queue.put(asyncio.run(allocate()))


def test_versions_are_allocated_atomically_by_concurrent_processes(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fle_environment(monkeypatch, db_url)
    DatabaseClient(db_url).close()  # migrate once, so the children race on allocation only
    env = {k: v for k, v in os.environ.items() if k.startswith(("FLE_DB_", "SQLITE_DB_", "SKILLS_DB_"))}
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    processes, each = 4, 8
    workers = [context.Process(target=_allocate, args=(env, each, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    versions = [v for _ in workers for v in queue.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(versions) == list(range(1, processes * each + 1))


def test_create_db_client_reads_fles_environment(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    use_fle_environment(monkeypatch, db_url)

    async def scenario() -> tuple[str, int]:
        client = await create_db_client()
        try:
            await client.create_program(program(version=11))
            return client.db.settings.backend, await client.get_largest_version()
        finally:
            await client.cleanup()
            await client.cleanup()  # idempotent

    assert run(scenario()) == (db_url.split(":")[0].split("+")[0].replace("postgresql", "postgres"), 11)


def test_fles_own_programs_table_in_the_same_file_is_left_untouched(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    path = tmp_path / "data.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE programs (id INTEGER PRIMARY KEY, code TEXT, version INTEGER)")
        conn.execute("INSERT INTO programs (code, version) VALUES ('old', 1)")
    use_fle_environment(monkeypatch, f"sqlite:///{path}")

    async def scenario() -> None:
        client = await create_db_client()
        try:
            await client.create_program(program())
        finally:
            await client.cleanup()

    run(scenario())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id, code, version FROM programs").fetchall() == [(1, "old", 1)]


def test_async_methods_never_block_the_event_loop(fle: FLEDBClient) -> None:
    if fle.db.settings.backend == "sqlite":
        slow = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) SELECT count(*) FROM c"
        )
    elif fle.db.settings.backend == "mysql":
        slow = "SELECT SLEEP(0.6) = 0 AS slept"
    else:
        slow = "SELECT pg_sleep(0.6) IS NULL AS slept"

    async def scenario() -> tuple[float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        started = time.perf_counter()
        await fle.execute_query(slow)
        elapsed = time.perf_counter() - started
        task.cancel()
        return elapsed, ticks

    elapsed, ticks = run(scenario())
    assert elapsed > 0.2, elapsed  # the call really was slow...
    assert ticks >= elapsed / 0.01 * 0.3, (elapsed, ticks)  # ...and the loop kept ticking meanwhile


def test_importing_the_fle_module_does_not_import_fle() -> None:
    code = "import sys, fle_db, fle_db.fle; print(any(m == 'fle' or m.startswith('fle.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=5),
        max_leaves=30,
    ).filter(lambda v: isinstance(v, dict))
)
def test_key_order_restores_any_objects_json_text_exactly(value: dict[str, Any]) -> None:
    stored = json.loads(json.dumps(value, sort_keys=True))  # what a store that keeps values, not order, returns
    assert json.dumps(_reordered(stored, _key_order(value))) == json.dumps(value)


def test_a_program_model_over_the_column_limit_is_refused_up_front(fle: FLEDBClient) -> None:
    with pytest.raises(ValidationError, match=r"model.*200"):
        run(fle.create_program(program(model="m" * 201)))
    assert run(fle.execute_query("SELECT count(*) AS n FROM search_nodes")) == [{"n": 0}]
