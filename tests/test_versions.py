"""Versions and tree summaries (the public methods FLE's drop-in uses): allocation under
concurrency, idempotent registration, read-back, hostile input — on every backend of ``db``."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fle_db import DatabaseClient
from fle_db.errors import ValidationError


def test_allocated_versions_are_distinct_and_increasing_under_concurrent_callers(db: DatabaseClient) -> None:
    assert db.get_version() is None
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda i: db.allocate_version(f"run {i}", "gpt"), range(24)))
    assert sorted(got) == list(range(1, 25))
    assert db.get_version() == {"version": 24, "description": f"run {got.index(24)}", "model": "gpt"}


def test_a_registered_version_keeps_its_first_description_and_counts_for_allocation(db: DatabaseClient) -> None:
    db.register_version(41, "first", "m1")
    db.register_version(41, "second", "m2")  # idempotent: the first description stays
    assert db.get_version(41) == {"version": 41, "description": "first", "model": "m1"}
    assert db.get_version(7) is None
    assert db.allocate_version() == 42
    assert db.get_version(42) == {"version": 42, "description": None, "model": None}


def test_tree_summary_and_node_values_follow_the_nodes(db: DatabaseClient) -> None:
    assert db.get_tree_summary("fle-v1") == {"nodes": 0, "max_depth": None}
    for depth, value in ((0, 1.5), (2, None), (1, -2.0)):
        db.append_step("fle-v1-i0", {"action": "a"}, node={"tree": "fle-v1", "depth": depth, "value": value})
    db.append_step("fle-v10-i0", {"action": "b"}, node={"tree": "fle-v10", "depth": 0, "value": 3.0})
    db.append_step("other-i0", {"action": "c"}, node={"tree": "other", "depth": 0, "value": 9.0})
    assert db.get_tree_summary("fle-v1") == {"nodes": 3, "max_depth": 2}
    assert db.get_node_values("fle-v1") == [1.5, -2.0]  # oldest first, None left out
    assert db.get_node_values(tree_prefix="fle-v") == [1.5, -2.0, 3.0]
    assert db.get_node_values(tree_prefix="fle_v") == []  # '_' is a character, not a LIKE wildcard


@pytest.mark.parametrize(
    ("call", "args"),
    [
        ("register_version", (True,)),
        ("register_version", (2**63,)),
        ("register_version", ("1",)),
        ("register_version", (1, b"bytes")),
        ("register_version", (1, "nul\x00")),
        ("register_version", (1, None, "m" * 201)),
        ("allocate_version", (None, 5)),
        ("get_version", (1.0,)),
        ("get_version", (False,)),
        ("get_tree_summary", ("' OR 1=1 --",)),
        ("get_tree_summary", (None,)),
        ("get_node_values", ()),
        ("get_node_values", ("fle-v1",)),
    ],
)
def test_hostile_arguments_raise_validation_errors_and_write_nothing(
    db: DatabaseClient, call: str, args: tuple[Any, ...]
) -> None:
    kwargs = {"tree_prefix": "fle-v"} if args == ("fle-v1",) else {}
    with pytest.raises(ValidationError):
        getattr(db, call)(*args, **kwargs)
    assert db.get_version() is None


def test_version_and_tree_calls_are_counted_in_the_performance_metrics(db: DatabaseClient) -> None:
    db.allocate_version()
    db.register_version(5)
    db.get_version(5)
    db.get_tree_summary("t")
    db.get_node_values("t")
    with pytest.raises(ValidationError):
        db.get_version("5")  # type: ignore[arg-type]
    operations = db.get_performance_metrics()["operations"]
    for name in ("allocate_version", "register_version", "get_tree_summary", "get_node_values"):
        assert operations[name]["count"] == 1
    assert operations["get_version"] == {**operations["get_version"], "count": 2, "errors": 1}
