"""A connection the server closed while it sat idle in the pool never fails a call: nothing pings
it first, so its first statement fails, and every write method (the non-idempotent ones too: their
COMMIT was never sent) is retried on a new connection."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import mysql_admin

from fle_db import DatabaseClient, NotFoundError, Settings


def _gone(db: DatabaseClient) -> bool:
    try:
        db.load_trajectory("t")
    except NotFoundError:
        return True
    return False


def _node(db: DatabaseClient) -> int:
    return int(db.get_search_nodes("tree")[0]["node_id"])


#: Every write method of the client, called once after the pool's connection was killed:
#: name -> (call, check of its effect).
WRITES: dict[str, tuple[Callable[[DatabaseClient], Any], Callable[[DatabaseClient], bool]]] = {
    "save_trajectory": (
        lambda db: db.save_trajectory({"id": "t", "task": "again"}),
        lambda db: db.load_trajectory("t")["task"] == "again",
    ),
    "save_step": (
        lambda db: db.save_step({"trajectory_id": "t", "step_number": 1}, game_state={"tick": 1}),
        lambda db: len(db.load_steps("t")) == 2,
    ),
    "batch_save_steps": (
        lambda db: db.batch_save_steps([{"trajectory_id": "t", "step_number": 1}]),
        lambda db: len(db.load_steps("t")) == 2,
    ),
    "append_step": (
        lambda db: db.append_step("t", {"action": "appended"}),
        lambda db: [s.get("action") for s in db.load_steps("t")][-1] == "appended",
    ),
    "fork_trajectory": (
        lambda db: db.fork_trajectory("t", 0, trajectory_id="fork"),
        lambda db: db.load_trajectory("fork")["parent_trajectory_id"] == "t",
    ),
    "save_game_state": (lambda db: db.save_game_state({"tick": 9}), lambda db: True),
    "save_agent_output": (
        lambda db: db.save_agent_output({"trajectory_id": "t", "step_number": 0, "code": "x"}),
        lambda db: len(db.load_agent_outputs("t")) == 1,
    ),
    "save_environment_feedback": (
        lambda db: db.save_environment_feedback({"trajectory_id": "t", "step_number": 0, "stdout": "ok"}),
        lambda db: len(db.load_environment_feedbacks("t")) == 1,
    ),
    "save_metadata": (lambda db: db.save_metadata("t", "k", 2), lambda db: db.load_metadata("t") == {"k": 2}),
    "update_search_stats": (
        lambda db: db.update_search_stats(_node(db), add_visits=1),
        lambda db: db.get_search_node(_node(db))["visits"] == 1,
    ),
    "visit_search_node": (
        lambda db: db.visit_search_node(_node(db)),
        lambda db: db.get_search_node(_node(db))["visits"] == 1,
    ),
    "allocate_version": (lambda db: db.allocate_version("v"), lambda db: db.get_version() is not None),
    "register_version": (lambda db: db.register_version(7, "v"), lambda db: db.get_version(7) is not None),
    "delete_trajectory": (lambda db: db.delete_trajectory("t"), _gone),
    "cleanup": (lambda db: db.cleanup(trajectory_ids=["t"]), _gone),
    "restore_to": (lambda db: db.restore_to(db.recovery_window()["to"]), lambda db: len(db.load_steps("t")) == 1),
}


def _kill_connections(backend: str, url: str) -> int:
    """Close, on the server, every connection to the database of ``url``; returns how many."""
    database = Settings.resolve(url).url.database
    if backend == "postgres":
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            ).fetchall()
        return len(rows)
    with mysql_admin() as admin, admin.cursor() as cursor:
        cursor.execute("SELECT id FROM information_schema.processlist WHERE db = %s", (database,))
        ids = [row[0] for row in cursor.fetchall()]
        for pid in ids:
            cursor.execute(f"KILL {int(pid)}")
    return len(ids)


@pytest.mark.parametrize("server", ["postgres", "mysql"])
@pytest.mark.parametrize("method", sorted(WRITES))
def test_every_write_method_survives_a_connection_the_server_closed_while_idle(
    server: str, method: str, make_url: Callable[[str], str], tmp_path: Path
) -> None:
    url = make_url(server)
    call, applied = WRITES[method]
    with DatabaseClient(url, max_connections=1, backup_dir=str(tmp_path / "bk"), backup_interval=0) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0}, node={"tree": "tree", "depth": 0})
        db.save_metadata("t", "k", 1)
        assert _kill_connections(server, url) >= 1
        call(db)
        assert applied(db)
