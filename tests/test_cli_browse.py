"""Browsing runs from the terminal: ``fle-db list`` and ``fle-db show`` (``--steps``, ``--step N``,
``--state``, ``--json``), and the demo that points at them — on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import ALL_BACKENDS

from fle_db import DatabaseClient
from fle_db.cli import main

LONG_ID = "run-" + "x" * 36  # 40 characters: the widest id a table must keep on one line


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(params=ALL_BACKENDS)
def url(request: pytest.FixtureRequest, make_url: Any) -> str:
    return str(make_url(request.param))


def _fill(url: str) -> None:
    """Four runs saved a few milliseconds apart (oldest first), one of them a fork."""
    with DatabaseClient(url) as db:
        for index, (tid, task, agent, success) in enumerate(
            [("old", "iron", "gpt", True), ("mid", "copper", "claude", False), (LONG_ID, "iron", "claude", True)]
        ):
            db.save_trajectory({"id": tid, "task": task, "agent_type": agent, "success": success,
                                "total_reward": float(index)})  # fmt: skip
            db.batch_save_steps(
                {"trajectory_id": tid, "step_number": n, "action": f"print({n})", "reward": 1.0}
                for n in range(index + 1)
            )
            time.sleep(0.01)
        db.fork_trajectory("old", 0, "old-fork", task="iron", agent_type="gpt")


def test_list_shows_runs_newest_first_with_every_column(url: str) -> None:
    _fill(url)
    page = ok_json(invoke("--url", url, "list", "--json"))
    rows = page["trajectories"]
    assert [row["id"] for row in rows] == ["old-fork", LONG_ID, "mid", "old"]
    assert rows[0]["parent_trajectory_id"] == "old" and rows[0]["parent_step_number"] == 0
    assert rows[1]["steps"] == 3 and rows[1]["total_reward"] == 2.0 and rows[1]["success"] is True
    table = invoke("--url", url, "list")
    assert table.exit_code == 0, table.output
    for header in ("id", "task", "agent", "steps", "reward", "ok", "started", "fork of"):
        assert header in table.stdout
    assert "old step 0" in table.stdout  # the fork's parent and fork point


def test_list_filters_by_task_agent_success_since_and_limit(url: str) -> None:
    _fill(url)

    def ids(*args: str) -> list[str]:
        return [row["id"] for row in ok_json(invoke("--url", url, "--json", "list", *args))["trajectories"]]

    assert ids("--task", "iron") == ["old-fork", LONG_ID, "old"]
    assert ids("--agent", "claude") == [LONG_ID, "mid"]
    assert ids("--success") == [LONG_ID, "old"]
    assert ids("--failed") == ["mid"]
    assert ids("--task", "iron", "--agent", "gpt") == ["old-fork", "old"]
    assert ids("--limit", "2") == ["old-fork", LONG_ID]
    assert ids("--since", (datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert len(ids("--since", (datetime.now(UTC) - timedelta(hours=1)).isoformat())) == 4
    more = invoke("--url", url, "list", "--limit", "2")
    assert "--limit N shows more" in more.stdout
    assert invoke("--url", url, "list", "--task", "none-such").stdout.strip() == "No trajectories match."


def test_list_table_fits_80_columns_and_never_wraps_a_40_character_id(url: str) -> None:
    _fill(url)
    wide = invoke("--url", url, "list").stdout  # a 40-character id and a fork: one block per run
    assert max(len(line) for line in wide.splitlines()) <= 80
    assert LONG_ID in wide.splitlines()  # whole, on a line of its own
    table = invoke("--url", url, "list", "--task", "copper").stdout  # short ids: a table
    assert max(len(line) for line in table.splitlines()) <= 80
    assert table.split()[:8] == ["id", "task", "agent", "steps", "reward", "ok", "started", "(UTC)"]


def test_list_refuses_bad_input_with_one_line_and_the_right_exit_code(url: str, tmp_path: Path) -> None:
    _fill(url)
    one_line_error(invoke("--url", url, "list", "--since", "yesterday"), 2, "since")
    assert invoke("--url", url, "list", "--limit", "0").exit_code == 2
    assert invoke("--url", url, "list", "--limit", "100000").exit_code == 2
    hostile = invoke("--url", url, "list", "--task", "x'; DROP TABLE trajectories; --", "--agent", "%")
    assert hostile.exit_code == 0 and hostile.stdout.strip() == "No trajectories match."
    assert len(ok_json(invoke("--url", url, "list", "--json"))["trajectories"]) == 4  # nothing was dropped
    missing = tmp_path / "none.db"
    one_line_error(invoke("--url", f"sqlite:///{missing}", "list"), 1, "no database")
    assert not missing.exists()  # browsing never creates a database


def test_show_step_prints_code_output_reward_and_state_by_key(url: str) -> None:
    with DatabaseClient(url) as db:
        db.save_trajectory({"id": "r", "task": "iron"})
        db.save_step(
            {"trajectory_id": "r", "step_number": 0, "action": "ignored", "reward": 2.5},
            agent_output={"code": "place_entity(Prototype.StoneFurnace)\nprint('done')", "model": "m-1"},
            environment_feedback={"stdout": "Placed stone-furnace", "error": "no coal"},
            game_state={"entities": [{"name": "stone-furnace"}] * 3, "tick": 60, "research": {"a": 1, "b": 2}},
        )
    shown = invoke("--url", url, "show", "r", "--step", "0", "--state")
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "place_entity(Prototype.StoneFurnace)" in out and "print('done')" in out  # the agent's code
    assert "Placed stone-furnace" in out and "Error: no coal" in out  # the environment's answer
    assert "2.5" in out and "m-1" in out
    assert "entities" in out and "list of 3" in out and "object of 2 keys" in out and "tick" in out
    as_json = ok_json(invoke("--url", url, "show", "r", "--step", "0", "--json"))
    with DatabaseClient(url) as db:
        checkpoint = db.load_checkpoint("r", 0)
    assert as_json == {key: value for key, value in checkpoint.items() if key != "game_state"}
    assert ok_json(invoke("--url", url, "show", "r", "--step", "0", "--state", "--json")) == checkpoint
    latest = invoke("--url", url, "show", "r", "--state")  # --state alone: of the latest step
    assert latest.exit_code == 0 and "research" in latest.stdout


def test_show_steps_lists_every_step_on_one_line_each(url: str) -> None:
    _fill(url)
    result = invoke("--url", url, "show", LONG_ID, "--steps")
    assert result.exit_code == 0, result.output
    for n in range(3):
        assert f"print({n})" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    listed = ok_json(invoke("--url", url, "show", LONG_ID, "--steps", "--json"))
    assert [step["step_number"] for step in listed["step_list"]] == [0, 1, 2]


def test_show_of_a_fork_resumes_at_its_fork_point_and_counts_its_steps_from_there(url: str) -> None:
    _fill(url)  # old-fork: forked from step 0 of old, no step of its own
    inherited = invoke("--url", url, "show", "old-fork", "--state")
    assert inherited.exit_code == 0 and "step 0 (inherited from old)" in " ".join(inherited.stdout.split())
    as_json = ok_json(invoke("--url", url, "show", "old-fork", "--state", "--json"))
    assert as_json["inherited_from"] == {"trajectory_id": "old", "step_number": 0}
    with DatabaseClient(url) as db:
        for _ in range(2):
            db.append_step("old-fork", {"action": "print('fork')"})
    shown = ok_json(invoke("--url", url, "show", "old-fork", "--json"))
    assert (shown["steps"], shown["latest_step_number"], shown["contiguous"]) == (2, 2, True)
    assert "not contiguous" not in invoke("--url", url, "show", "old-fork").stdout


def test_show_a_missing_step_or_a_bad_number_fails_with_one_line(url: str) -> None:
    _fill(url)
    one_line_error(invoke("--url", url, "show", "old", "--step", "7"), 1, "step 7", "does not exist")
    assert invoke("--url", url, "show", "old", "--step", "-1").exit_code == 2
    one_line_error(invoke("--url", url, "show", "bad id;", "--step", "0"), 2, "trajectory_id")
    with DatabaseClient(url) as db:
        db.save_trajectory({"id": "empty"})
    one_line_error(invoke("--url", url, "show", "empty", "--state"), 1, "no step")


def test_demo_prints_full_ids_dated_today_and_one_next_block(url: str) -> None:
    result = invoke("--url", url, "demo", "--trajectories", "3", "--steps", "4")
    assert result.exit_code == 0, result.output
    out = result.stdout
    with DatabaseClient(url) as db:
        ids = [row["id"] for row in db.list_trajectories()["trajectories"]]
        assert len(ids) == 3
        for tid in ids:
            assert tid in out  # full ids, nothing to expand by hand
            started = datetime.fromisoformat(db.load_trajectory(tid)["start_time"])
            assert started.date() >= (datetime.now(UTC) - timedelta(days=1)).date()
            assert started <= datetime.now(UTC)
    assert out.count("Next:") == 1
    next_block = out.split("Next:")[1]
    for command in ("list", "show demo-", "--step 1", " ui", "Python quick start"):
        assert command in next_block
    assert "existing database" not in out


def test_demo_says_when_it_adds_to_an_existing_database(url: str) -> None:
    first = ok_json(invoke("--url", url, "--json", "demo", "--trajectories", "2", "--steps", "3"))
    assert first["existing_trajectories"] == 0
    second = invoke("--url", url, "demo", "--trajectories", "1", "--steps", "3")
    assert second.exit_code == 0, second.output
    said = " ".join(second.stdout.split())  # as read, whatever the line breaks
    assert "adding 1 trajectory to the existing database" in said
    assert "(2 trajectories already there)" in said
