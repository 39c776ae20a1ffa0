"""The game-state storage engine: exact round trips, dedup, bounded deltas, checksums, cache, GC."""

from __future__ import annotations

import gc
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fle_db import DatabaseClient, DataIntegrityError, NotFoundError
from fle_db.storage import codec
from fle_db.storage.engine import CODEC_ZSTD_DELTA, KEYFRAME_INTERVAL, PendingBases, StateEncoder
from fle_db.workload import Workload

_counter = itertools.count()


def _query(db: DatabaseClient, sql: str) -> list[tuple[object, ...]]:
    with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        return [tuple(row) for row in conn.execute(text(sql))]


def _write_run(db: DatabaseClient, trajectories: int = 2, steps: int = 40) -> dict[tuple[int, int], tuple[str, dict]]:
    work = Workload(7)
    saved = {}
    for n in range(steps):
        for t in range(trajectories):
            cp = work.checkpoint(t, n, f"run{t}")
            ids = db.save_step(cp["step"], game_state=cp["game_state"])
            saved[(t, n)] = (ids["game_state_id"], cp["game_state"])
    return saved


def test_every_state_of_a_run_loads_back_exactly(db: DatabaseClient, db_url: str) -> None:
    saved = _write_run(db)
    with DatabaseClient(db_url) as fresh:  # nothing cached
        for state_id, state in saved.values():
            loaded = fresh.load_game_state(state_id)
            assert loaded == state
            assert loaded["entities"] == state["entities"]  # the zlib+base64 string, byte for byte
        latest = fresh.load_latest_checkpoint("run1")
        assert latest is not None and latest["game_state"] == saved[(1, 39)][1]


def test_unchanged_parts_are_stored_once_and_changed_ones_as_bounded_deltas(db: DatabaseClient) -> None:
    saved = _write_run(db)
    distinct_research = {repr(sorted(s["research"]["technologies"].items())) for _, s in saved.values()}
    research_blobs = _query(db, "SELECT count(DISTINCT blob_id) FROM game_state_parts WHERE key = 'research'")
    assert research_blobs[0][0] == len(distinct_research) < len(saved) / 4
    chains = _query(db, "SELECT count(*) FROM blobs d JOIN blobs b ON b.id = d.base_id WHERE b.base_id IS NOT NULL")
    assert chains == [(0,)], "a delta's base must always be a keyframe"
    deltas = _query(db, "SELECT count(*) FROM blobs WHERE base_id IS NOT NULL")[0][0]
    assert deltas > 0
    stored = _query(db, "SELECT sum(length(body)) FROM blobs")[0][0]
    raw = sum(len(orjson.dumps(state)) for _, state in saved.values())
    assert stored * 20 < raw  # type: ignore[operator]


def test_a_keyframe_replaces_a_delta_of_the_same_content(db: DatabaseClient) -> None:
    base = {"research": {"t": ["x" * 6000]}, "tick": 0}
    changed = {"research": {"t": ["x" * 6000, "y"]}, "tick": 1}
    db.save_step({"trajectory_id": "a", "step_number": 0}, game_state=base)
    db.save_step({"trajectory_id": "a", "step_number": 1}, game_state=changed)  # research delta vs base
    assert _query(db, "SELECT count(*) FROM blobs WHERE base_id IS NOT NULL")[0][0] >= 1
    db.save_step({"trajectory_id": "b", "step_number": 0}, game_state=changed)  # b's keyframe: same content
    assert _query(db, "SELECT count(*) FROM blobs d JOIN blobs b ON b.id = d.base_id WHERE b.base_id IS NOT NULL") == [
        (0,)
    ]
    db.save_step({"trajectory_id": "b", "step_number": 1}, game_state={**changed, "research": {"t": ["z"] * 900}})
    for tid in ("a", "b"):
        for step in db.load_steps(tid):
            db.load_game_state(step["game_state_id"])


@pytest.mark.parametrize("damage", ["flip", "truncate", "codec"])
def test_a_damaged_blob_raises_an_integrity_error_never_wrong_data(
    db: DatabaseClient, db_url: str, damage: str
) -> None:
    state = {"research": {"techs": [f"tech-{i}" for i in range(800)]}, "tick": 5}
    state_id = db.save_game_state(state)
    blob_id, body = _query(
        db, "SELECT b.id, b.body FROM blobs b JOIN game_state_parts p ON p.blob_id = b.id WHERE p.key = 'research'"
    )[0]
    with db._backend.engine.begin() as conn:  # type: ignore[attr-defined]
        if damage == "codec":
            conn.execute(text("UPDATE blobs SET codec = 'zstd9' WHERE id = :i"), {"i": blob_id})
        else:
            data = bytearray(body)  # type: ignore[arg-type]
            if damage == "flip":
                data[len(data) // 2] ^= 0xFF
            else:
                del data[len(data) // 2 :]
            conn.execute(text("UPDATE blobs SET body = :b WHERE id = :i"), {"b": bytes(data), "i": blob_id})
    with DatabaseClient(db_url) as fresh, pytest.raises(DataIntegrityError, match=str(blob_id)):
        fresh.load_game_state(state_id)


def test_a_state_missing_a_part_raises_an_integrity_error(db: DatabaseClient, db_url: str) -> None:
    state_id = db.save_game_state({"research": {"x": "y" * 5000}, "tick": 1})
    with db._backend.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("DELETE FROM game_state_parts WHERE key = 'rest'"))
    with DatabaseClient(db_url) as fresh, pytest.raises(DataIntegrityError, match="parts"):
        fresh.load_game_state(state_id)


def test_the_cache_serves_repeated_parts_and_stays_within_its_bound(db_url: str) -> None:
    bound = 1_000_000
    with DatabaseClient(db_url, cache_max_bytes=bound) as db:
        saved = _write_run(db, trajectories=1, steps=12)
        for state_id, _ in saved.values():
            db.load_game_state(state_id)
        first = db._records.cache.stats()  # type: ignore[attr-defined]
        assert first["misses"] > 0 and first["hits"] > 0  # the research tree repeats between states
        for state_id, _ in saved.values():
            db.load_game_state(state_id)
        second = db._records.cache.stats()  # type: ignore[attr-defined]
        assert second["misses"] == first["misses"]
        assert second["hits"] == first["hits"] + 2 * len(saved)  # research + rest of each state
        for state_id, _ in _write_run(db, trajectories=3, steps=12).values():
            db.load_game_state(state_id)
        assert db._records.cache.stats()["bytes"] <= bound  # type: ignore[attr-defined]


def test_deleting_trajectories_collects_their_states_and_blobs(db: DatabaseClient) -> None:
    _write_run(db, trajectories=2, steps=12)
    shared = db.save_step(
        {"trajectory_id": "other", "step_number": 0}, game_state=db.load_latest_checkpoint("run0")["game_state"]
    )  # type: ignore[index]
    db.delete_trajectory("run0")
    db.delete_trajectory("run1")
    assert db.load_game_state(shared["game_state_id"])["research"]  # still whole: its blobs were kept
    remaining_states = _query(db, "SELECT count(*) FROM game_states")[0][0]
    assert remaining_states == 1
    db.delete_trajectory("other")
    for table in ("game_states", "game_state_parts", "blobs"):
        assert _query(db, f"SELECT count(*) FROM {table}") == [(0,)], table


def test_a_writer_whose_keyframe_was_deleted_elsewhere_still_saves(db_url: str) -> None:
    work = Workload(3)
    with DatabaseClient(db_url) as writer, DatabaseClient(db_url) as other:
        for n in range(3):
            cp = work.checkpoint(0, n, "t")
            writer.save_step(cp["step"], game_state=cp["game_state"])
        other.delete_trajectory("t")
        cp = work.checkpoint(0, 3, "t")
        ids = writer.save_step(cp["step"], game_state=cp["game_state"])
        assert other.load_game_state(ids["game_state_id"]) == cp["game_state"]


def test_a_part_this_client_stored_last_is_referenced_without_being_encoded_again() -> None:
    encoder = StateEncoder(10_000_000)
    state = Workload(5).checkpoint(0, 0, "t")["game_state"]
    first = PendingBases()
    stored = encoder.encode(state, "s", "t", first)
    assert len(stored.blobs) == len(stored.parts) and not first.rebased
    uncommitted = encoder.encode(state, "s", "t", PendingBases())
    assert uncommitted.blobs == stored.blobs, "a part is referenced only once its write committed"
    encoder.committed(first)
    again = PendingBases()
    referenced = encoder.encode(state, "s", "t", again)
    assert referenced.id == stored.id and referenced.parts == stored.parts
    assert referenced.blobs == () and again.rebased  # a retry may have to write them whole
    encoder.forget()
    assert len(encoder.encode(state, "s", "t", PendingBases()).blobs) == len(stored.parts)


def test_a_state_whose_parts_were_deleted_elsewhere_is_saved_whole_and_loads_exactly(db_url: str) -> None:
    work = Workload(4)
    with DatabaseClient(db_url) as writer, DatabaseClient(db_url) as other:
        cp = work.checkpoint(0, 0, "t")
        for n in range(3):  # the same state each step: every part is referenced after step 0
            writer.save_step({**cp["step"], "step_number": n}, game_state=cp["game_state"])
        other.delete_trajectory("t")
        ids = writer.save_step({**cp["step"], "step_number": 3}, game_state=cp["game_state"])
        assert other.load_game_state(ids["game_state_id"]) == cp["game_state"]
        assert [s["step_number"] for s in other.load_steps("t")] == [3]
        assert other.validate()["ok"]


def test_a_trajectory_deleted_elsewhere_is_created_again_by_the_next_step(db_url: str) -> None:
    with DatabaseClient(db_url) as writer, DatabaseClient(db_url) as other:
        writer.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        other.delete_trajectory("t")
        writer.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"})
        assert other.load_trajectory("t")["id"] == "t"
        assert [s["action"] for s in other.load_steps("t")] == ["b"]


def test_steps_outputs_and_feedbacks_are_stored_as_deltas_and_load_exactly(db: DatabaseClient, db_url: str) -> None:
    work = Workload(11)
    saved = [work.checkpoint(0, n, "r") for n in range(10)]
    for cp in saved:
        db.save_step(cp["step"], agent_output=cp["agent_output"], environment_feedback=cp["environment_feedback"])
    for table in ("steps", "agent_outputs", "environment_feedbacks"):
        assert _query(db, f"SELECT count(*) FROM {table} WHERE base_step_number IS NOT NULL")[0][0] > 0, table
    with DatabaseClient(db_url) as fresh:
        assert [{k: v for k, v in s.items() if k != "game_state_id"} for s in fresh.load_steps("r")] == [
            cp["step"] for cp in saved
        ]
        outputs = fresh.load_agent_outputs("r")
        assert [{k: v for k, v in o.items() if k not in ("trajectory_id", "step_number")} for o in outputs] == [
            cp["agent_output"] for cp in saved
        ]
        latest = fresh.load_latest_checkpoint("r")
        assert (
            latest is not None
            and {k: v for k, v in latest["step"].items() if k != "game_state_id"} == saved[-1]["step"]
        )


def test_a_delta_of_a_delta_still_decodes(db_url: str) -> None:
    work = Workload(5)
    cps = [work.checkpoint(0, n, "c") for n in range(6)]
    with DatabaseClient(db_url) as first:
        for cp in cps[:4]:
            first.save_step(cp["step"])
    with DatabaseClient(db_url) as restarted:  # remembers nothing: re-saving step 3 makes it its keyframe
        restarted.save_step(cps[3]["step"])
        restarted.save_step(cps[4]["step"])
        restarted.save_step(cps[5]["step"])
    with DatabaseClient(db_url) as reader:
        assert [s["step_number"] for s in reader.load_steps("c")] == list(range(6))
        assert reader.load_steps("c")[5]["action"] == cps[5]["step"]["action"]
        assert reader.load_latest_checkpoint("c")["step"]["action"] == cps[5]["step"]["action"]  # type: ignore[index]


def test_a_damaged_step_raises_an_integrity_error(db: DatabaseClient, db_url: str) -> None:
    work = Workload(2)
    for n in range(3):
        db.save_step(work.checkpoint(0, n, "d")["step"])
    body = _query(db, "SELECT body FROM steps WHERE step_number = 2")[0][0]
    data = bytearray(body)  # type: ignore[arg-type]
    data[-3] ^= 0x55
    with db._backend.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE steps SET body = :b WHERE step_number = 2"), {"b": bytes(data)})
    with DatabaseClient(db_url) as fresh, pytest.raises(DataIntegrityError):
        fresh.load_steps("d")


def test_many_states_load_in_one_call_equal_to_one_by_one(db: DatabaseClient, db_url: str) -> None:
    saved = _write_run(db, trajectories=2, steps=15)
    ids = [state_id for state_id, _ in saved.values()]
    with DatabaseClient(db_url) as fresh:
        loaded = fresh.load_game_states(ids)
        assert list(loaded) == list(dict.fromkeys(ids))
        for state_id, state in saved.values():
            assert loaded[state_id] == state
        with pytest.raises(NotFoundError, match="0" * 32):
            fresh.load_game_states([ids[0], "0" * 32])


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
# Values over PART_MIN_BYTES (parts of their own), alike between states so that deltas occur.
_big = st.tuples(st.integers(0, 40), _text).map(lambda v: ["tech-" * 10] * 90 + [v[0], v[1]])
_state = st.dictionaries(st.sampled_from(["research", "entities", "rest", "tick", "inv", "x" * 195]), _leaf | _big)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.lists(_state, min_size=1, max_size=8), min_size=1, max_size=3), delete=st.booleans())
def test_any_sequence_of_states_round_trips_and_deletion_leaves_no_orphans(
    db: DatabaseClient, db_url: str, runs: list[list[dict[str, object]]], delete: bool
) -> None:
    prefix = f"p{next(_counter)}"
    saved = []
    for t, states in enumerate(runs):
        for n, state in enumerate(states):
            saved.append((db.save_step({"trajectory_id": f"{prefix}-{t}", "step_number": n}, game_state=state), state))
    with DatabaseClient(db_url) as fresh:
        for ids, state in saved:
            assert fresh.load_game_state(ids["game_state_id"]) == state
    chains = _query(db, "SELECT count(*) FROM blobs d JOIN blobs b ON b.id = d.base_id WHERE b.base_id IS NOT NULL")
    assert chains == [(0,)]
    if delete:
        for t in range(len(runs)):
            db.delete_trajectory(f"{prefix}-{t}")
        orphans = _query(
            db,
            "SELECT count(*) FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM game_state_parts p WHERE p.blob_id = b.id)"
            " AND NOT EXISTS (SELECT 1 FROM blobs d WHERE d.base_id = b.id)",
        )
        assert orphans == [(0,)]
        assert _query(
            db,
            "SELECT count(*) FROM game_states g WHERE NOT EXISTS (SELECT 1 FROM steps s WHERE s.game_state_id = g.id)",
        ) == [(0,)]


def test_threads_sharing_one_client_write_and_read_consistently(db: DatabaseClient) -> None:
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        work = Workload(9)  # the generator is not thread-safe; the client is
        try:
            for n in range(12):
                cp = work.checkpoint(t % 2, n, f"th{t}")
                db.save_step(cp["step"], agent_output=cp["agent_output"], game_state=cp["game_state"])
                assert db.load_latest_checkpoint(f"th{t}")["game_state"] == cp["game_state"]  # type: ignore[index]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for t in range(4):
        assert [s["step_number"] for s in db.load_steps(f"th{t}")] == list(range(12))


def test_gc_pauses_from_several_threads_nest_and_the_last_one_out_restores_the_collector() -> None:
    inside, release = threading.Event(), threading.Event()

    def long_pause() -> None:
        with codec.gc_paused():
            inside.set()
            release.wait(10)

    assert gc.isenabled()
    worker = threading.Thread(target=long_pause)
    worker.start()
    try:
        assert inside.wait(10)
        with codec.gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "another thread is still decoding: the collector must stay off"
    finally:
        release.set()
        worker.join(10)
    assert gc.isenabled()
    gc.disable()
    try:
        with codec.gc_paused():
            pass
        assert not gc.isenabled(), "a collector the application turned off stays off"
    finally:
        gc.enable()


def test_a_keyframe_shared_by_many_threads_serves_at_most_its_interval_of_deltas() -> None:
    encoder = StateEncoder(1 << 20)
    record = {"observation": "x" * 4000, "n": 0}
    first = PendingBases()
    encoder.encode_record("steps", "t", 0, record, "step", first)
    encoder.committed(first)
    deltas = []

    def encode(number: int) -> None:
        got = encoder.encode_record("steps", "t", number, {**record, "n": number}, "step", PendingBases())
        if got.codec == CODEC_ZSTD_DELTA:
            deltas.append(got.base)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(encode, range(1, 8 * KEYFRAME_INTERVAL)))
    assert deltas.count(0) == KEYFRAME_INTERVAL
