"""Search-tree API (issue 8 item 1): forks share states by reference, lineage, children, best-N
per depth, atomic statistics and step numbering under concurrent writers — on both backends."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from fle_db import DatabaseClient
from fle_db.errors import NotFoundError, ValidationError

STATE = {"entities": "eJzLSM3JyQcABiwCFQ==", "research": {"technologies": {f"t{i}": i for i in range(300)}}}


def _node(tree: str, depth: int, value: float | None) -> dict[str, object]:
    return {"tree": tree, "depth": depth, "value": value}


def test_a_fork_shares_the_parents_game_state_without_a_copy(db: DatabaseClient) -> None:
    first = db.append_step("root", {"action": "a"}, game_state=STATE)
    db.append_step("root", {"action": "b"}, game_state={**STATE, "entities": "other"})
    states_before = db.get_statistics()["game_states"]
    blobs_before = db.get_statistics()["blobs"]

    fork = db.fork_trajectory("root", 0, "fork-1", task="explore")
    resumed = db.append_step(fork, {"action": "c"}, game_state=STATE)

    assert resumed["game_state_id"] == first["game_state_id"]
    stats = db.get_statistics()
    assert (stats["game_states"], stats["blobs"]) == (states_before, blobs_before)
    trajectory = db.load_trajectory(fork)
    assert (trajectory["parent_trajectory_id"], trajectory["parent_step_number"], trajectory["task"]) == (
        "root",
        0,
        "explore",
    )
    assert db.fork_trajectory("root", 0, "fork-1") == "fork-1"  # idempotent


def test_forking_from_a_missing_step_is_refused(db: DatabaseClient) -> None:
    db.append_step("root", {"action": "a"})
    with pytest.raises(NotFoundError):
        db.fork_trajectory("root", 5, "fork-1")


def test_lineage_is_the_path_to_the_root_across_forks_and_explicit_parents(db: DatabaseClient) -> None:
    for action in "abc":
        db.append_step("root", {"action": action})
    db.fork_trajectory("root", 1, "fork")
    db.append_step("fork", {"action": "d"})
    db.append_step("fork", {"action": "e"})
    db.append_step("other", {"action": "f", "parent_trajectory_id": "fork", "parent_step_number": 3})

    path = [(p["trajectory_id"], p["step_number"]) for p in db.get_lineage("other", 0)]

    assert path == [("root", 0), ("root", 1), ("fork", 2), ("fork", 3), ("other", 0)]
    assert db.validate()["ok"]
    assert [(p["trajectory_id"], p["step_number"]) for p in db.get_lineage("root", 0)] == [("root", 0)]
    with pytest.raises(NotFoundError):
        db.get_lineage("root", 9)


def test_children_of_a_step_are_its_next_step_its_forks_and_its_explicit_children(db: DatabaseClient) -> None:
    for action in "abc":
        db.append_step("root", {"action": action})
    db.fork_trajectory("root", 1, "fork")
    db.append_step("fork", {"action": "d"})
    db.append_step("other", {"action": "e", "parent_trajectory_id": "root", "parent_step_number": 1})

    children = [(c["trajectory_id"], c["step_number"]) for c in db.get_children("root", 1)]

    assert children == [("fork", 2), ("other", 0), ("root", 2)]
    assert db.get_children("root", 2) == []
    with pytest.raises(NotFoundError):
        db.get_children("root", 7)


def test_best_n_per_depth_ranks_each_depth_by_value(db: DatabaseClient) -> None:
    values = {0: [1.0, 5.0, None], 1: [3.0, 2.0, 4.0, 0.5], 2: [7.0]}
    for depth, vals in values.items():
        for i, value in enumerate(vals):
            db.append_step(f"b{depth}-{i}", {"action": "x"}, node=_node("tree", depth, value))
    db.append_step("elsewhere", {"action": "x"}, node=_node("another-tree", 0, 99.0))

    best = [(n["depth"], n["value"]) for n in db.get_best_per_depth("tree", 2)]

    assert best == [(0, 5.0), (0, 1.0), (1, 4.0), (1, 3.0), (2, 7.0)]
    assert [(n["depth"], n["value"]) for n in db.get_best_per_depth("tree")] == [(0, 5.0), (1, 4.0), (2, 7.0)]
    top = db.get_search_nodes("tree", limit=3)
    assert [n["value"] for n in top] == [7.0, 5.0, 4.0]


def test_concurrent_visit_and_value_updates_lose_nothing(db: DatabaseClient) -> None:
    node_id = db.append_step("t", {"action": "a"}, node=_node("tree", 0, None))["node_id"]
    threads, each = 8, 40

    def bump(_: int) -> None:
        for _ in range(each):
            db.update_search_stats(node_id, add_visits=1, add_value=0.5)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(bump, range(threads)))

    node = db.get_search_node(node_id)
    assert (node["visits"], node["value"]) == (threads * each, threads * each * 0.5)


def test_concurrent_appenders_get_distinct_gap_free_step_numbers(db: DatabaseClient) -> None:
    threads, each = 6, 15
    numbers: list[int] = []
    lock = threading.Lock()

    def append(worker: int) -> None:
        for i in range(each):
            saved = db.append_step("shared", {"action": f"{worker}-{i}"}, node=_node("tree", i, float(i)))
            with lock:
                numbers.append(saved["step_number"])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(append, range(threads)))

    assert sorted(numbers) == list(range(threads * each))
    assert [s["step_number"] for s in db.load_steps("shared")] == list(range(threads * each))
    assert db.load_latest_checkpoint("shared")["step"]["step_number"] == threads * each - 1  # type: ignore[index]


def test_visit_adds_visits_and_sets_each_childs_advantage(db: DatabaseClient) -> None:
    parent = db.append_step("p", {"action": "a"}, node=_node("tree", 0, 1.0))
    for i, value in enumerate([1.0, 2.0, 6.0]):
        db.append_step(
            f"c{i}",
            {"action": "b", "parent_trajectory_id": "p", "parent_step_number": parent["step_number"]},
            node=_node("tree", 1, value),
        )

    node = db.visit_search_node(parent["node_id"], 3)

    assert node["visits"] == 3
    children = sorted(db.get_search_nodes("tree", with_advantage=True), key=lambda n: n["value"])
    assert [c["advantage"] for c in children] == [-2.0, -1.0, 3.0]
    assert {c["parent_node_id"] for c in children} == {parent["node_id"]}


def test_search_statistics_of_unknown_nodes_and_bad_values_are_refused(db: DatabaseClient) -> None:
    node_id = db.append_step("t", {"action": "a"}, node=_node("tree", 0, 1.0))["node_id"]
    with pytest.raises(NotFoundError):
        db.update_search_stats(node_id + 100, add_visits=1)
    with pytest.raises(ValidationError):
        db.update_search_stats(node_id, value=float("nan"))
    with pytest.raises(ValidationError):
        db.append_step("t", {"action": "b", "step_number": 4})
    with pytest.raises(ValidationError):
        db.append_step("t", {"action": "b"}, node={"tree": "tree", "depth": -1})
    assert db.get_search_node(node_id)["visits"] == 0


def test_deleting_a_trajectory_removes_its_search_nodes(db: DatabaseClient) -> None:
    node_id = db.append_step("t", {"action": "a"}, node=_node("tree", 0, 1.0))["node_id"]
    db.append_step("u", {"action": "a"}, node=_node("tree", 0, 1.0))
    assert db.get_statistics()["search_nodes"] == 2
    assert db.cleanup(trajectory_ids=["u"])["rows"]["search_nodes"] == 1
    db.delete_trajectory("t")
    with pytest.raises(NotFoundError):
        db.get_search_node(node_id)
    assert db.get_search_nodes("tree") == []


def test_node_ids_are_monotonic_and_never_reused(db: DatabaseClient) -> None:
    first = db.append_step("a", {"action": "a"}, node=_node("tree", 0, 1.0))["node_id"]
    second = db.append_step("b", {"action": "a"}, node=_node("tree", 0, 1.0))["node_id"]
    db.delete_trajectory("b")
    third = db.append_step("c", {"action": "a"}, node=_node("tree", 0, 1.0))["node_id"]
    assert first < second < third


def test_best_per_depth_and_recent_nodes_read_the_tree_index(db: DatabaseClient) -> None:
    db.batch_save_steps({"trajectory_id": f"t{i % 50}", "step_number": i // 50, "action": "x"} for i in range(2000))
    for i in range(200):
        db.save_step(
            {"trajectory_id": f"n{i}", "step_number": 0, "action": "x"}, node=_node(f"tree{i % 10}", i % 7, float(i))
        )
    backend = db._backend  # type: ignore[attr-defined]
    from fle_db.backends.base import NodeQuery
    from fle_db.backends.sql.search import _node_select
    from fle_db.schema import search_nodes

    query = _node_select().where(search_nodes.c.tree == "tree3").order_by(search_nodes.c.id.desc()).limit(5)
    with backend.engine.connect() as conn:
        compiled = query.compile(dialect=backend.engine.dialect, compile_kwargs={"literal_binds": True})
        if backend.name == "sqlite":
            plan = "\n".join(str(r[-1]) for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}"))
            assert "ix_search_nodes_recent" in plan or "ix_search_nodes_tree" in plan, plan
            assert "SCAN search_nodes" not in plan, plan
        else:
            conn.execute(text("ANALYZE"))
            conn.execute(text("SET enable_seqscan = off"))
            plan = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
            assert "ix_search_nodes_" in plan, plan
    assert len(backend.find_nodes(NodeQuery("tree3", order="recent", limit=5))) == 5


@pytest.mark.parametrize("bad", ["\ud800", "a\x00b", 5])
def test_a_version_description_or_model_that_is_not_clean_text_is_refused_before_writing(
    db: DatabaseClient, bad: object
) -> None:
    """Lone surrogates too: PostgreSQL's driver cannot encode them (found by tests/test_any_input.py)."""
    with pytest.raises(ValidationError):
        db.allocate_version(bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        db.register_version(3, "v", bad)  # type: ignore[arg-type]
    assert db.get_version() is None
