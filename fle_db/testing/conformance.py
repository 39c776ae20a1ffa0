"""The backend conformance suite: the contract of every role of :mod:`fle_db.backends.base`, tested
through the public :class:`~fle_db.DatabaseClient` (and, for what the client does not expose,
the backend itself) on a fresh database per test. One suite per role:
:class:`CheckpointStoreConformance` (required), :class:`SearchStoreConformance`,
:class:`AdminStoreConformance`, :class:`HistoryStoreConformance` and
:class:`~fle_db.testing.tail.TailStoreConformance`, each optional role's tests skipped for a
backend that does not implement it; :class:`~fle_db.testing.suite.BackendConformance` runs them all.

Subclass :class:`BackendConformance` in a module pytest collects (the class name must start
with ``Test``) and provide the ``new_database_url`` fixture: a callable returning the URL of a
new, empty database each time it is called. Optionally override ``client_options`` (keyword
arguments for every ``DatabaseClient``) and :attr:`BackendConformance.shared_database` (False for
a database that lives only as long as its client, such as an in-memory one).

What it covers, per area (each test's name states the behaviour it proves):

* round trips: every record kind, exact JSON types (bool vs int, ``-0.0``, 64-bit integers,
  ``1e300``, unicode), large and incompressible payloads, case-sensitive ids;
* idempotency and conflicts: an identical write is a no-op, a different one a ConflictError
  with nothing written; batches are all-or-nothing;
* resume: the highest step number whatever the write order, with its game state;
* lineage: forks need their parent step, never change, never cycle; deletions refuse
  dependants (DependencyError) unless cascading, and collect unshared game states;
* cleanup (lineage-aware, exact dry runs), thinning (fork-aware, or a typed UnsupportedError),
  typed errors, migration status;
* search (SearchStore): nodes created with their step, best-first and per-depth reads, atomic
  statistics under concurrent updates, visits, FLE versions allocated and registered;
* admin (AdminStore): statistics, health, optimize, validate, read-only queries;
* point in time (HistoryStore): restoring an earlier instant in place, and undoing it; copies into an empty
  database of the same backend, refused into a filled one;
* concurrency: threads and processes writing one database at once lose and duplicate nothing;
* the live tail (TailStore, in :mod:`.tail`): new steps in commit order, resumed after a cursor.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .. import (
    ConflictError,
    DatabaseClient,
    DependencyError,
    NotFoundError,
    Settings,
    StateThinnedError,
    UnsupportedError,
    ValidationError,
)
from .. import migrations as fle_migrations
from ..backends import CheckpointStore, as_admin, as_search, open_backend, registry, roles

#: Values whose JSON types are easy to lose: bool vs int, -0.0, 64-bit edges, tiny and huge
#: floats, unicode outside the BMP, a literal backslash-u0000, empty containers.
EXACT_VALUES: dict[str, Any] = {
    "true": True,
    "false": False,
    "one": 1,
    "one_float": 1.0,
    "negative_zero": -0.0,
    "int64_max": 2**63 - 1,
    "int64_min": -(2**63),
    "tenth": 0.1,
    "huge": 1e300,
    "tiny": 5e-324,
    "null": None,
    "empty_string": "",
    "unicode": "Grüße, 工厂, 🏭, e\u0301",
    "escaped_nul": "\\u0000",
    "empty_list": [],
    "empty_dict": {},
    "nested": {"a": [1, 2.5, "x", [True, None], {"b": {"c": [[]]}}]},
}

_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


def assert_same_json(actual: Any, expected: Any, path: str = "value") -> None:
    """Assert ``actual`` equals ``expected`` with the same JSON types at every level (``1`` is
    not ``1.0`` nor ``True``; ``-0.0`` keeps its sign), naming the first path that differs."""
    assert type(actual) is type(expected), f"{path}: {actual!r} ({type(actual).__name__}) != {expected!r}"
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same_json(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {len(actual)} items != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_json(a, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert actual == expected and math.copysign(1, actual) == math.copysign(1, expected), f"{path}: {actual!r}"
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def require_role(db_or_url: DatabaseClient | str, role: str) -> None:
    """Skip the calling test unless the backend of ``db_or_url`` (a client, or a database URL)
    implements the optional ``role`` (``"SearchStore"``, ``"AdminStore"``, ``"HistoryStore"``)."""
    name = db_or_url.settings.backend if isinstance(db_or_url, DatabaseClient) else Settings.resolve(db_or_url).backend
    if not roles(registry.backend_class(name))[role]:
        pytest.skip(f"the {name!r} backend does not implement the {role} role")


@contextmanager
def open_store(url: str, client_options: dict[str, Any]) -> Iterator[CheckpointStore]:
    """The backend of ``url`` itself (migrated), for the roles the client does not expose."""
    store = open_backend(Settings.resolve(url, **client_options))
    try:
        store.migrate()
        yield store
    finally:
        store.close()


def _step(tid: str, n: int, **fields: Any) -> dict[str, Any]:
    return {"trajectory_id": tid, "step_number": n, **fields}


def _state(n: int, size: int = 6000) -> dict[str, Any]:
    """A game state with a large part that changes a little per step (keyframes and deltas)."""
    return {
        "tick": n,
        "research": {f"tech{i}": {"researched": i < n, "cost": i * 10} for i in range(size // 40)},
        "inventory": {"iron-plate": n * 3},
    }


def _write_in_process(url: str, options: dict[str, Any], prefix: str, steps: int, queue: Any) -> None:
    """Child process of the multi-process test: one trajectory of ``steps`` checkpoints."""
    try:
        with DatabaseClient(url, **options) as db:
            for n in range(steps):
                db.save_step(_step(prefix, n, action=f"a{n}"), game_state={"tick": n, "who": prefix})
        queue.put(None)
    except BaseException as exc:  # report, never hang the parent
        queue.put(f"{type(exc).__name__}: {exc}")


class _Suite:
    """What every role suite shares: the fixtures a backend provides, and the client."""

    #: Whether a database outlives its client and several processes can open it at once (False
    #: for in-memory databases: the persistence and multi-process tests are then skipped).
    shared_database: ClassVar[bool] = True

    # -- fixtures a backend provides --------------------------------------------------------
    @pytest.fixture
    def new_database_url(self) -> Callable[[], str]:
        """Override: return a callable giving the URL of a new, empty database on each call."""
        pytest.fail("override the new_database_url fixture in your BackendConformance subclass", pytrace=False)

    @pytest.fixture
    def client_options(self) -> dict[str, Any]:
        """Keyword arguments for every DatabaseClient the suite opens (override to add some)."""
        return {}

    @pytest.fixture
    def url(self, new_database_url: Callable[[], str]) -> str:
        return new_database_url()

    @pytest.fixture
    def db(self, url: str, client_options: dict[str, Any]) -> Iterator[DatabaseClient]:
        client = DatabaseClient(url, **client_options)
        yield client
        client.close()


class CheckpointStoreConformance(_Suite):
    """The required role: round trips, idempotency, conflicts, resume, lineage, deletion,
    cleanup, schema and concurrency."""

    # -- schema and lifecycle --------------------------------------------------------------
    def test_fresh_database_reports_every_migration_pending_then_up_to_date(
        self, url: str, client_options: dict[str, Any]
    ) -> None:
        everything = fle_migrations.pending_revisions(None)
        with DatabaseClient(url, **{**client_options, "auto_migrate": False}) as db:
            status = db.get_migration_status()
            assert status["current_version"] is None and status["pending"] == everything
            assert status["up_to_date"] is False
            assert db.migrate() == everything
            assert db.migrate() == []
            assert db.get_migration_status() == {
                "current_version": everything[-1],
                "latest_version": everything[-1],
                "pending": [],
                "up_to_date": True,
            }

    def test_data_survives_closing_and_reopening(self, url: str, client_options: dict[str, Any]) -> None:
        if not self.shared_database:
            pytest.skip("this backend's databases live only as long as their client (shared_database = False)")
        with DatabaseClient(url, **client_options) as db:
            state_id = db.save_step(_step("t", 0, action="a"), game_state={"x": 1})["game_state_id"]
            db.save_metadata("t", "k", [1])
        with DatabaseClient(url, **client_options) as db:
            assert db.load_latest_checkpoint("t") == {
                "step": {**_step("t", 0, action="a"), "game_state_id": state_id},
                "agent_output": None,
                "environment_feedback": None,
                "game_state": {"x": 1},
            }
            assert db.load_metadata("t") == {"k": [1]}

    def test_close_is_idempotent(self, db: DatabaseClient) -> None:
        db.close()
        db.close()

    # -- round trips ------------------------------------------------------------------------
    def test_trajectory_round_trip_keeps_exact_json_types(self, db: DatabaseClient) -> None:
        db.save_trajectory({"id": "t", "agent_type": "a", "task": "iron", "total_reward": 2.5, **EXACT_VALUES})
        expected = {"id": "t", "agent_type": "a", "task": "iron", "total_reward": 2.5, **EXACT_VALUES}
        assert_same_json(db.load_trajectory("t"), expected)

    def test_every_record_kind_round_trips_exactly(self, db: DatabaseClient) -> None:
        state = {"entities": "eJwrSS0u0c1MzQEAF5gERg==", **EXACT_VALUES}
        saved = db.save_step(
            _step("t", 0, action="mine()", reward=1.5, **EXACT_VALUES),
            agent_output={"code": "mine()", **EXACT_VALUES},
            environment_feedback={"stdout": "ok", **EXACT_VALUES},
            game_state=state,
        )
        assert saved == {
            "trajectory_id": "t",
            "step_number": 0,
            "game_state_id": saved["game_state_id"],
            "created": True,
        }
        steps = db.load_steps("t")
        assert len(steps) == 1
        assert_same_json(
            steps[0],
            {**_step("t", 0, action="mine()", reward=1.5, **EXACT_VALUES), "game_state_id": saved["game_state_id"]},
        )
        assert_same_json(db.load_agent_outputs("t"), [{**_step("t", 0), "code": "mine()", **EXACT_VALUES}])
        assert_same_json(db.load_environment_feedbacks("t"), [{**_step("t", 0), "stdout": "ok", **EXACT_VALUES}])
        assert_same_json(db.load_game_state(saved["game_state_id"]), state)
        db.save_metadata("t", "everything", EXACT_VALUES)
        assert_same_json(db.load_metadata("t"), {"everything": EXACT_VALUES})

    # One database for all examples (each overwrites the same key), and the method runs once per
    # backend subclass: both health checks flag patterns that are intended here.
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(value=_json)
    def test_any_json_value_round_trips_exactly(self, db: DatabaseClient, value: Any) -> None:
        db.save_metadata("t", "value", value)
        assert_same_json(db.load_metadata("t")["value"], value)

    def test_large_incompressible_payloads_round_trip(self, db: DatabaseClient) -> None:
        """A 1 MB random state part and a 300 KB random step: larger than a MySQL BLOB (64 KB)."""
        noise = os.urandom(512 * 1024).hex()
        state = {"entities": noise, "tick": 1}
        saved = db.save_step(_step("t", 0, blob=noise[: 300 * 1024]), game_state=state)
        assert db.load_game_state(saved["game_state_id"]) == state
        assert db.load_steps("t")[0]["blob"] == noise[: 300 * 1024]

    def test_ids_are_case_sensitive(self, db: DatabaseClient) -> None:
        db.save_trajectory({"id": "Run1", "task": "upper"})
        db.save_trajectory({"id": "run1", "task": "lower"})
        db.save_metadata("run1", "Key", 1)
        db.save_metadata("run1", "key", 2)
        assert db.load_trajectory("Run1")["task"] == "upper"
        assert db.load_trajectory("run1")["task"] == "lower"
        assert db.load_metadata("run1") == {"Key": 1, "key": 2}

    def test_trajectory_saves_merge_keys(self, db: DatabaseClient) -> None:
        db.save_trajectory({"id": "t", "task": "iron", "config": {"model": "m"}})
        db.save_trajectory({"id": "t", "total_reward": 7.25, "end_time": "2026-01-01T00:00:00Z"})
        assert db.load_trajectory("t") == {
            "id": "t",
            "task": "iron",
            "config": {"model": "m"},
            "total_reward": 7.25,
            "end_time": "2026-01-01T00:00:00Z",
        }

    def test_game_states_are_content_addressed(self, db: DatabaseClient) -> None:
        first = db.save_game_state({"b": 2, "a": [1, 2]})
        assert db.save_game_state({"a": [1, 2], "b": 2}) == first
        other = db.save_game_state({"a": [2, 1], "b": 2})
        assert other != first
        assert db.load_game_states([first, other]) == {first: {"a": [1, 2], "b": 2}, other: {"a": [2, 1], "b": 2}}

    def test_keyframes_and_deltas_round_trip_and_delete(self, db: DatabaseClient) -> None:
        """Forty similar large states and steps: stored as keyframes plus deltas, read back
        exactly at any position, and deletable (deltas name keyframes of the same trajectory)."""
        payload = "x" * 8000
        for n in range(40):
            db.save_step(_step("t", n, code=payload + str(n)), game_state=_state(n))
        steps = db.load_steps("t")
        assert [s["code"] for s in steps] == [payload + str(n) for n in range(40)]
        states = db.load_game_states([s["game_state_id"] for s in steps])
        assert [states[s["game_state_id"]] for s in steps] == [_state(n) for n in range(40)]
        assert db.validate()["ok"]
        assert db.delete_trajectory("t") == ["t"]
        assert db.get_statistics()["game_states"] == 0 and db.get_statistics()["blobs"] == 0

    def test_a_trajectory_deleted_and_saved_again_is_stored_whole(self, db: DatabaseClient) -> None:
        """The client remembers the trajectory row and the state parts it stored last, and only
        references them; after they were deleted, the backend must refuse those references
        (MissingReferenceError) so that the client writes everything again."""
        for round_ in range(2):
            for n in range(3):
                db.save_step(_step("t", n, code=str(n)), game_state=_state(1))
            steps = db.load_steps("t")
            assert [s["code"] for s in steps] == ["0", "1", "2"], round_
            assert db.load_game_state(steps[-1]["game_state_id"]) == _state(1)
            assert db.validate()["ok"]
            assert db.delete_trajectory("t") == ["t"]

    # -- reading what is not there -----------------------------------------------------------
    def test_missing_records_raise_not_found(self, db: DatabaseClient) -> None:
        with pytest.raises(NotFoundError):
            db.load_trajectory("nope")
        with pytest.raises(NotFoundError):
            db.load_steps("nope")
        with pytest.raises(NotFoundError):
            db.load_game_state("0" * 32)
        known = db.save_game_state({"x": 1})
        with pytest.raises(NotFoundError, match="f" * 32):
            db.load_game_states([known, "f" * 32])
        with pytest.raises(NotFoundError):
            db.delete_trajectory("nope")
        with pytest.raises(NotFoundError):
            db.load_latest_checkpoint("nope")  # a typo'd id must not start a run afresh

    # -- idempotency and conflicts -----------------------------------------------------------
    def test_saving_the_same_checkpoint_again_is_a_no_op(self, db: DatabaseClient) -> None:
        parts: dict[str, Any] = {"agent_output": {"code": "c"}, "environment_feedback": {"out": "o"}}
        parts["game_state"] = {"s": 1}
        first = db.save_step(_step("t", 0, action="a"), **parts)
        again = db.save_step(_step("t", 0, action="a"), **parts)
        assert first["created"] is True and again == {**first, "created": False}
        assert len(db.load_steps("t")) == 1 and len(db.load_agent_outputs("t")) == 1

    @pytest.mark.parametrize("changed", ["step", "agent_output", "environment_feedback", "game_state"])
    def test_different_content_under_a_stored_step_is_a_conflict_and_writes_nothing(
        self, db: DatabaseClient, changed: str
    ) -> None:
        parts: dict[str, Any] = {
            "agent_output": {"code": "c"},
            "environment_feedback": {"out": "o"},
            "game_state": {"s": 1},
        }
        db.save_step(_step("t", 0, action="a"), **parts)
        step = _step("t", 0, action="a")
        if changed == "step":
            step["action"] = "b"
        else:
            parts[changed] = {"different": True}
        with pytest.raises(ConflictError):
            db.save_step(step, **parts)
        assert db.load_steps("t")[0]["action"] == "a"
        assert db.load_agent_outputs("t")[0]["code"] == "c"
        assert db.load_environment_feedbacks("t")[0]["out"] == "o"
        stats = db.get_statistics()
        counts = ("steps", "agent_outputs", "environment_feedbacks", "game_states")
        assert [stats[k] for k in counts] == [1, 1, 1, 1], "the conflicting call wrote something"

    def test_a_batch_is_all_or_nothing(self, db: DatabaseClient) -> None:
        db.save_step(_step("t", 5, action="stored"))
        batch = [_step("t", n, action=f"a{n}", game_state={"n": n}) for n in range(10)]
        batch[5] = _step("t", 5, action="different")
        with pytest.raises(ConflictError):
            db.batch_save_steps(batch)
        assert [s["step_number"] for s in db.load_steps("t")] == [5]
        assert db.get_statistics()["game_states"] == 0
        bad = [_step("u", 0, action="ok"), _step("u", 1, action=float("nan"))]
        with pytest.raises(ValidationError, match="batch element 1"):
            db.batch_save_steps(bad)
        with pytest.raises(NotFoundError):
            db.load_trajectory("u")

    def test_a_batch_saved_again_creates_nothing(self, db: DatabaseClient) -> None:
        batch = [_step(f"t{n % 3}", n, action="a", game_state={"n": n % 4}) for n in range(30)]
        first = db.batch_save_steps(batch)
        again = db.batch_save_steps(batch)
        assert all(r["created"] for r in first) and not any(r["created"] for r in again)
        assert [r["game_state_id"] for r in first] == [r["game_state_id"] for r in again]
        assert db.get_statistics()["steps"] == 30 and db.get_statistics()["game_states"] == 4

    # -- resume --------------------------------------------------------------------------------
    def test_resume_returns_the_highest_step_whatever_the_write_order(self, db: DatabaseClient) -> None:
        for n in (5, 2, 10, 9, 2**40, 7):
            db.save_step(_step("t", n, action=f"a{n}"), game_state={"tick": n})
        latest = db.load_latest_checkpoint("t")
        assert latest is not None
        assert latest["step"]["step_number"] == 2**40 and latest["game_state"] == {"tick": 2**40}
        assert [s["step_number"] for s in db.load_steps("t")] == [2, 5, 7, 9, 10, 2**40]

    def test_resume_of_a_step_without_state_and_of_no_step(self, db: DatabaseClient) -> None:
        db.save_trajectory({"id": "empty"})
        assert db.load_latest_checkpoint("empty") is None
        db.save_step(_step("t", 0), game_state={"tick": 0})
        db.save_step(_step("t", 1, note="no state"))
        assert db.load_latest_checkpoint("t") == {
            "step": {**_step("t", 1, note="no state"), "game_state_id": None},
            "agent_output": None,
            "environment_feedback": None,
            "game_state": None,
        }

    def test_resuming_a_fork_continues_from_where_it_branched(self, db: DatabaseClient) -> None:
        for n in range(3):
            db.save_step(_step("root", n), agent_output={"code": f"c{n}"}, game_state={"tick": n})
        db.fork_trajectory("root", 1, "fork")
        at_fork = {**db.load_checkpoint("root", 1), "inherited_from": {"trajectory_id": "root", "step_number": 1}}
        assert db.load_latest_checkpoint("fork") == at_fork
        assert db.append_step("fork", {"action": "x"}, game_state={"tick": 9})["step_number"] == 2
        latest = db.load_latest_checkpoint("fork")
        assert latest is not None and "inherited_from" not in latest
        assert (latest["step"]["step_number"], latest["game_state"]) == (2, {"tick": 9})
        assert db.append_step("fork")["step_number"] == 3
        lineage = [(p["trajectory_id"], p["step_number"]) for p in db.get_lineage("fork", 3)]
        assert lineage == [("root", 0), ("root", 1), ("fork", 2), ("fork", 3)]
        db.save_trajectory({"id": "old", "parent_trajectory_id": "root", "parent_step_number": 2})
        db.save_step(_step("old", 0))  # a fork numbered from 0 keeps its numbering
        assert db.append_step("old")["step_number"] == 1

    def test_a_fork_of_a_fork_resumes_from_the_trajectory_that_stores_its_fork_point(self, db: DatabaseClient) -> None:
        for n in range(3):
            db.save_step(_step("root", n), game_state={"tick": n})
        db.fork_trajectory("root", 2, "a")
        db.fork_trajectory("a", 1, "a1")  # a stores no step 1: it is root's
        assert db.load_trajectory("a1")["parent_trajectory_id"] == "root"
        assert db.load_latest_checkpoint("a1")["inherited_from"] == {"trajectory_id": "root", "step_number": 1}  # type: ignore[index]
        db.append_step("a", game_state={"tick": 30})
        db.fork_trajectory("a", 3, "b")
        db.fork_trajectory("b", 3, "c")  # before b has a step
        for tid in ("b", "c"):
            latest = db.load_latest_checkpoint(tid)
            assert latest is not None and latest["inherited_from"] == {"trajectory_id": "a", "step_number": 3}
            assert latest["game_state"] == {"tick": 30}
        assert db.append_step("c")["step_number"] == 4
        with pytest.raises(NotFoundError):
            db.fork_trajectory("b", 4, "d")  # after b's fork point: not b's step

    def test_a_fork_inherits_task_and_agent_type_unless_given(self, db: DatabaseClient) -> None:
        db.save_trajectory({"id": "root", "task": "iron", "agent_type": "gpt", "total_reward": 5.0})
        db.save_step(_step("root", 0))
        db.fork_trajectory("root", 0, "same")
        assert db.load_trajectory("same") == {"id": "same", "task": "iron", "agent_type": "gpt",
                                              "parent_trajectory_id": "root", "parent_step_number": 0}  # fmt: skip
        db.fork_trajectory("root", 0, "other", task="copper")
        assert (db.load_trajectory("other")["task"], db.load_trajectory("other")["agent_type"]) == ("copper", "gpt")
        db.save_trajectory({"id": "same", "task": "renamed"})
        db.fork_trajectory("root", 0, "same")  # again: idempotent, the fork keeps its own task
        assert db.load_trajectory("same")["task"] == "renamed"

    # -- lineage and deletion ------------------------------------------------------------------
    def test_forks_need_their_parent_step_and_keep_their_lineage(self, db: DatabaseClient) -> None:
        db.save_step(_step("root", 3))
        with pytest.raises(NotFoundError):
            db.save_trajectory({"id": "fork", "parent_trajectory_id": "root", "parent_step_number": 4})
        db.save_trajectory({"id": "fork", "parent_trajectory_id": "root", "parent_step_number": 3})
        db.save_step(_step("fork", 4))
        with pytest.raises(DependencyError):
            db.save_trajectory({"id": "fork", "parent_trajectory_id": "root", "parent_step_number": 0})
        with pytest.raises(DependencyError):
            db.save_trajectory({"id": "root", "parent_trajectory_id": "fork", "parent_step_number": 4})
        assert db.load_trajectory("fork")["parent_step_number"] == 3

    def test_branch_points_cover_every_step_with_two_or_more_children(self, db: DatabaseClient) -> None:
        for n in range(3):
            db.save_step(_step("root", n))
        db.fork_trajectory("root", 1, "fork")
        db.save_step(_step("fork", 2))
        db.save_step({**_step("other", 9), "parent_trajectory_id": "root", "parent_step_number": 0})
        points = set(db._backend.branch_points("root"))
        assert {0, 1} <= points
        assert all(len(db.get_children("root", n)) >= 2 for n in {0, 1})
        assert db._backend.branch_points("fork") == []

    def test_deleting_a_trajectory_with_forks_needs_cascade(self, db: DatabaseClient) -> None:
        db.save_step(_step("root", 0), game_state={"shared": True})
        db.save_trajectory({"id": "fork", "parent_trajectory_id": "root", "parent_step_number": 0})
        db.save_step(_step("fork", 1), game_state={"own": True})
        with pytest.raises(DependencyError, match="fork"):
            db.delete_trajectory("root")
        assert len(db.load_steps("root")) == 1
        assert sorted(db.delete_trajectory("root", cascade=True)) == ["fork", "root"]
        for tid in ("root", "fork"):
            with pytest.raises(NotFoundError):
                db.load_trajectory(tid)
        assert db.get_statistics()["game_states"] == 0

    def test_deleting_keeps_game_states_other_trajectories_use(self, db: DatabaseClient) -> None:
        shared = {"research": "shared" * 1000}
        db.save_step(_step("a", 0), agent_output={"c": 1}, environment_feedback={"f": 1}, game_state=shared)
        db.save_metadata("a", "k", 1)
        db.save_step(_step("a", 1), game_state={"only": "a"})
        db.save_step(_step("b", 0), game_state=shared)
        assert db.delete_trajectory("a") == ["a"]
        stats = db.get_statistics()
        assert (stats["trajectories"], stats["steps"], stats["game_states"]) == (1, 1, 1)
        assert (stats["agent_outputs"], stats["environment_feedbacks"]) == (0, 0)
        assert db.load_latest_checkpoint("b")["game_state"] == shared  # type: ignore[index]
        assert db.validate()["ok"]

    # -- cleanup -------------------------------------------------------------------------------
    def test_cleanup_dry_run_is_exact_and_changes_nothing(self, db: DatabaseClient) -> None:
        for tid in ("a", "b"):
            db.save_step(_step(tid, 0), game_state={"tid": tid})
        db.save_metadata("a", "k", 1)
        dry = db.cleanup(trajectory_ids=["a"], dry_run=True)
        assert dry["trajectories"] == ["a"] and dry["rows"]["steps"] == 1 and dry["rows"]["trajectory_metadata"] == 1
        assert db.get_statistics()["trajectories"] == 2
        real = db.cleanup(trajectory_ids=["a"])
        assert {k: v for k, v in real.items() if k != "dry_run"} == {k: v for k, v in dry.items() if k != "dry_run"}
        assert db.get_statistics()["trajectories"] == 1

    def test_cleanup_keeps_what_forks_descend_from_and_the_best_per_task(self, db: DatabaseClient) -> None:
        # Rewards that single-precision floats could not tell apart.
        for tid, reward in (("low", 1.0000001), ("high", 1.0000002), ("mid", 1.00000015)):
            db.save_step(_step(tid, 0))
            db.save_trajectory({"id": tid, "task": "iron", "total_reward": reward})
        db.save_trajectory({"id": "fork", "task": "copper", "parent_trajectory_id": "low", "parent_step_number": 0})
        report = db.cleanup(task="iron", keep_best_per_task=1)
        assert report["trajectories"] == ["mid"] and report["kept_for_lineage"] == ["low"]
        assert db.load_trajectory("high")["total_reward"] == 1.0000002
        with pytest.raises(ValidationError):
            db.cleanup()

    def test_thin_keeps_latest_and_fork_points_with_an_exact_dry_run_or_is_unsupported(
        self, db: DatabaseClient
    ) -> None:
        for n in range(4):
            db.save_step(_step("a", n), game_state={"n": n})
        db.save_trajectory({"id": "f", "parent_trajectory_id": "a", "parent_step_number": 1})
        try:
            dry = db.thin(trajectory_ids=["a"], keep_every=3, dry_run=True)
        except UnsupportedError:
            return  # thinning is optional; refusing it must be typed
        assert db.thin(trajectory_ids=["a"], keep_every=3) == {**dry, "dry_run": False} and dry["game_states"] == 1
        with pytest.raises(StateThinnedError):
            db.load_checkpoint("a", 2)
        assert db.load_latest_checkpoint("f")["game_state"] == {"n": 1}  # type: ignore[index]

    # -- concurrency ---------------------------------------------------------------------------
    def test_threads_writing_at_once_lose_and_duplicate_nothing(self, db: DatabaseClient) -> None:
        def work(worker: int) -> list[bool]:
            created = []
            for n in range(10):
                # Every worker writes the shared checkpoints too: exactly one may create each.
                created.append(db.save_step(_step("shared", n, action="same"), game_state={"n": n})["created"])
                db.save_step(_step(f"own{worker}", n), game_state={"worker": worker, "n": n})
            db.save_trajectory({"id": "merged", f"key{worker}": worker})
            return created

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(work, range(4)))
        assert [sum(r[n] for r in results) for n in range(10)] == [1] * 10
        assert len(db.load_steps("shared")) == 10
        for worker in range(4):
            assert [s["step_number"] for s in db.load_steps(f"own{worker}")] == list(range(10))
        assert db.load_trajectory("merged") == {"id": "merged", **{f"key{w}": w for w in range(4)}}

    def test_processes_writing_at_once_lose_nothing(self, url: str, client_options: dict[str, Any]) -> None:
        if not self.shared_database:
            pytest.skip("this backend's databases cannot be shared between processes (shared_database = False)")
        DatabaseClient(url, **client_options).close()  # migrate once, up front
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_write_in_process, args=(url, client_options, f"p{i}", 15, queue)) for i in range(3)
        ]
        for p in procs:
            p.start()
        results = [queue.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert results == [None, None, None]
        with DatabaseClient(url, **client_options) as db:
            for i in range(3):
                assert [s["step_number"] for s in db.load_steps(f"p{i}")] == list(range(15))
            assert db.get_statistics()["game_states"] == 45


class SearchStoreConformance(_Suite):
    """The SearchStore role (skipped for a backend without it): search nodes created with their
    step, atomic statistics, visits, and FLE versions."""

    def test_search_nodes_are_created_with_their_step_and_found_best_first(self, db: DatabaseClient) -> None:
        require_role(db, "SearchStore")
        ids = [
            db.append_step(f"b{n}", {"action": "x"}, node={"tree": "tree", "depth": n % 2, "value": float(n)})[
                "node_id"
            ]
            for n in range(4)
        ]
        db.append_step("other", {"action": "x"}, node={"tree": "elsewhere", "depth": 0, "value": 99.0})
        best = db.get_search_nodes("tree", limit=2)
        assert [node["node_id"] for node in best] == [ids[3], ids[2]]
        assert [node["node_id"] for node in db.get_search_nodes("tree", order="recent")] == ids[::-1]
        per_depth = db.get_best_per_depth("tree", 1)
        assert [(node["depth"], node["value"]) for node in per_depth] == [(0, 2.0), (1, 3.0)]
        node = db.get_search_node(trajectory_id="b1", step_number=0)
        assert node["node_id"] == ids[1] and node["visits"] == 0 and node["tree"] == "tree"
        with pytest.raises(NotFoundError):
            db.get_search_node(10**9)

    def test_search_statistics_add_up_under_concurrent_updates(self, db: DatabaseClient) -> None:
        require_role(db, "SearchStore")
        node_id = db.append_step("t", {"action": "a"}, node={"tree": "tree", "depth": 0, "value": None})["node_id"]

        def bump(_: int) -> None:
            for _ in range(10):
                db.update_search_stats(node_id, add_visits=1, add_value=0.5)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(bump, range(4)))
        node = db.get_search_node(node_id)
        assert (node["visits"], node["value"]) == (40, 20.0)
        set_node = db.update_search_stats(node_id, value=1.5, advantage=-0.25, visits=3)
        assert (set_node["visits"], set_node["value"], set_node["advantage"]) == (3, 1.5, -0.25)

    def test_visit_counts_children_and_sets_their_advantage_against_their_mean(self, db: DatabaseClient) -> None:
        require_role(db, "SearchStore")
        parent = db.append_step("p", {"action": "root"}, node={"tree": "tree", "depth": 0, "value": 0.0})
        for i, value in enumerate((1.0, 3.0)):
            db.save_step(
                _step(f"c{i}", 0, parent_trajectory_id="p", parent_step_number=parent["step_number"]),
                node={"tree": "tree", "depth": 1, "value": value},
            )
        visited = db.visit_search_node(parent["node_id"], children=2)
        assert visited["visits"] == 2
        advantages = {n["trajectory_id"]: n["advantage"] for n in db.get_search_nodes("tree") if n["depth"] == 1}
        assert advantages == {"c0": -1.0, "c1": 1.0}

    def test_versions_are_allocated_distinct_and_registered_idempotently(
        self, url: str, client_options: dict[str, Any]
    ) -> None:
        require_role(url, "SearchStore")
        with open_store(url, client_options) as store:
            search = as_search(store)
            assert search.load_version(None) is None
            with ThreadPoolExecutor(max_workers=4) as pool:
                numbers = list(pool.map(lambda i: search.allocate_version(f"v{i}", "m"), range(8)))
            assert sorted(numbers) == list(range(1, 9))
            search.register_version(42, "given", "model")
            search.register_version(42, "again", "other")  # a no-op: the first registration stays
            assert search.load_version(42) == (42, "given", "model")
            assert search.load_version(None) == (42, "given", "model")
            assert search.allocate_version(None, None) == 43
            assert search.load_version(7) is not None and search.load_version(1000) is None


class AdminStoreConformance(_Suite):
    """The AdminStore role (skipped for a backend without it): statistics, health, maintenance,
    validation and read-only queries."""

    # -- operations ----------------------------------------------------------------------------
    def test_statistics_count_what_was_written(self, db: DatabaseClient) -> None:
        require_role(db, "AdminStore")
        db.batch_save_steps(
            [
                _step("t", n, agent_output={"c": n}, environment_feedback={"f": n}, game_state={"n": n})
                for n in range(12)
            ]
        )
        stats = db.get_statistics()
        assert stats["exact_counts"] is True
        counts = [stats[k] for k in ("trajectories", "steps", "agent_outputs", "environment_feedbacks", "game_states")]
        assert counts == [1, 12, 12, 12, 12]
        assert stats["size"] > 0 and stats["oldest_step_at"] is not None

    def test_health_check_passes_and_its_write_probe_leaves_no_trace(self, db: DatabaseClient) -> None:
        require_role(db, "AdminStore")
        health = db.health_check()
        assert health["status"] in ("ok", "degraded"), health
        assert {"connectivity", "schema", "write_probe", "pool"} <= health["checks"].keys()
        assert health["checks"]["write_probe"]["status"] == "ok", health
        assert db.get_statistics()["trajectories"] == 0

    def test_optimize_and_validate_keep_the_data(self, db: DatabaseClient) -> None:
        require_role(db, "AdminStore")
        for n in range(5):
            db.save_step(_step("t", n), game_state=_state(n))
        report = db.optimize(vacuum=True, reindex=True)
        assert report["actions"] and all(a["ms"] >= 0 for a in report["actions"])
        result = db.validate()
        assert result["ok"], result["problems"]
        assert [s["step_number"] for s in db.load_steps("t")] == list(range(5))

    def test_read_only_queries_read_and_refuse_to_write(self, url: str, client_options: dict[str, Any]) -> None:
        require_role(url, "AdminStore")
        if not self.shared_database:
            pytest.skip("the rows a client wrote are not visible to another opening (shared_database = False)")
        with DatabaseClient(url, **client_options) as db:
            db.save_step(_step("t", 0))
            db.save_step(_step("u", 0))
        with open_store(url, client_options) as store:
            admin = as_admin(store)
            rows = admin.read_only_query("SELECT id FROM trajectories ORDER BY id", ())
            assert [row["id"] for row in rows] == ["t", "u"]
            with pytest.raises(ValidationError):
                admin.read_only_query("DELETE FROM steps", ())
            with pytest.raises(ValidationError):
                admin.read_only_query("SELECT 1; DELETE FROM steps", ())
            assert len(admin.read_only_query("SELECT trajectory_id FROM steps", ())) == 2


class HistoryStoreConformance(_Suite):
    """The HistoryStore role (skipped for a backend without it): point-in-time restores and
    whole-database copies."""

    # -- point in time, copies ---------------------------------------------------------------
    def test_restore_to_an_earlier_instant_brings_it_back_and_can_be_undone(
        self, url: str, client_options: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        require_role(url, "HistoryStore")
        options = {"backup_dir": str(tmp_path_factory.mktemp("backups")), **client_options}
        with DatabaseClient(url, **options) as db:
            db.save_step(_step("t", 0, action="a"), game_state={"tick": 0})
            db.save_metadata("t", "k", "before")
            before = db.recovery_window()["to"]
            db.save_step(_step("t", 1, action="b"), game_state={"tick": 1})
            db.save_metadata("t", "k", "after")
            db.save_step(_step("gone", 0))
            db.delete_trajectory("gone")
            after = db.recovery_window()["to"]
            db.restore_to(before)
            assert [s["step_number"] for s in db.load_steps("t")] == [0]
            assert db.load_metadata("t") == {"k": "before"}
            assert db.load_latest_checkpoint("t")["game_state"] == {"tick": 0}  # type: ignore[index]
            db.restore_to(after)  # the restore was one more commit: it can be undone
            assert [s["step_number"] for s in db.load_steps("t")] == [0, 1]
            assert db.load_metadata("t") == {"k": "after"}
            with pytest.raises(NotFoundError):
                db.load_trajectory("gone")
            assert db.validate()["ok"]

    def test_copy_to_an_empty_database_is_identical_and_refuses_a_filled_one(
        self, db: DatabaseClient, new_database_url: Callable[[], str], client_options: dict[str, Any]
    ) -> None:
        require_role(db, "HistoryStore")
        if not self.shared_database:
            pytest.skip("a copy into another in-memory database could not be opened again (shared_database = False)")
        for n in range(5):
            db.save_step(_step("t", n, action=f"a{n}"), agent_output={"c": n}, game_state=_state(n))
        db.save_metadata("t", "k", EXACT_VALUES)
        target = new_database_url()
        db.copy_to(target)
        with DatabaseClient(target, **client_options) as copy:
            assert copy.load_steps("t") == db.load_steps("t")
            assert copy.load_agent_outputs("t") == db.load_agent_outputs("t")
            assert_same_json(copy.load_metadata("t"), {"k": EXACT_VALUES})
            steps = copy.load_steps("t")
            assert copy.load_game_states([s["game_state_id"] for s in steps]) == db.load_game_states(
                [s["game_state_id"] for s in steps]
            )
        with pytest.raises(ConflictError):
            db.copy_to(target)


__all__ = [
    "EXACT_VALUES",
    "AdminStoreConformance",
    "CheckpointStoreConformance",
    "HistoryStoreConformance",
    "SearchStoreConformance",
    "assert_same_json",
    "require_role",
]
