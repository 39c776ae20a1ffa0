"""The ``fle-db`` command line, on every backend (``db_url``), through click's ``CliRunner``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url as sa_make_url

from fle_db import DatabaseClient
from fle_db.cli import main
from fle_db.workload import Workload

PASSWORD = "s3cret-pw"
COMMANDS = ["demo", "init", "migrate", "status", "config", "show"]


def invoke(*args: str) -> Result:
    """Run ``fle-db ARGS``; unexpected exceptions fail the test instead of being swallowed."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def with_password(url: str) -> str:
    return sa_make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


# -- demo -----------------------------------------------------------------------------------
def test_demo_writes_contiguous_steps_and_completes_the_resumed_trajectory(db_url: str) -> None:
    summary = as_json(invoke("--url", db_url, "--json", "demo", "--trajectories", "2", "--steps", "6", "--seed", "3"))
    ids = summary["trajectory_ids"]
    assert len(ids) == 2
    assert summary["steps_written"] == 12
    assert summary["interrupted_trajectory_id"] in ids
    assert summary["resumed_from_step"] == summary["interrupted_after_step"] == 2
    assert summary["continued_at_step"] == 3
    assert summary["resumed_state_verified"] is True
    with DatabaseClient(db_url) as db:
        workload = Workload(3, start=db.load_metadata(ids[0])["workload"]["start"])
        for index, tid in enumerate(ids):
            assert [s["step_number"] for s in db.load_steps(tid)] == list(range(6))
            assert [o["step_number"] for o in db.load_agent_outputs(tid)] == list(range(6))
            assert [f["step_number"] for f in db.load_environment_feedbacks(tid)] == list(range(6))
            trajectory = db.load_trajectory(tid)
            assert trajectory["end_time"] is not None
            assert isinstance(trajectory["total_reward"], float)
            assert isinstance(trajectory["success"], bool)
            assert db.load_metadata(tid)["workload"] == {
                "seed": 3,
                "trajectory_index": index,
                "steps": 6,
                "start": workload.start,
            }
            latest = db.load_latest_checkpoint(tid)
            assert latest is not None
            assert latest["step"]["step_number"] == 5
            assert latest["game_state"] == workload.game_state(index, 5)


def test_demo_prints_progress_and_a_summary_naming_the_resumed_trajectory(db_url: str) -> None:
    result = invoke("--url", db_url, "demo", "--trajectories", "3", "--steps", "4")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for label in ("steps written", "steps/s", "resume latency", "interrupted", "resumed", "database size"):
        assert label in out
    assert "12/12" in out  # the progress bar's final state, printed once on a non-terminal
    assert "crash" in out and "continuing at step 2" in out
    tid = next(word for word in out.split() if word.startswith("demo-") and word.endswith("-1"))
    with DatabaseClient(db_url) as db:
        assert [s["step_number"] for s in db.load_steps(tid)] == [0, 1, 2, 3]


def test_demo_can_run_twice_against_the_same_database(db_url: str) -> None:
    first = as_json(invoke("--url", db_url, "--json", "demo", "--trajectories", "2", "--steps", "3"))
    second = as_json(invoke("--url", db_url, "--json", "demo", "--trajectories", "2", "--steps", "3"))
    assert not set(first["trajectory_ids"]) & set(second["trajectory_ids"])
    with DatabaseClient(db_url) as db:
        for tid in first["trajectory_ids"] + second["trajectory_ids"]:
            assert len(db.load_steps(tid)) == 3


def test_demo_without_url_or_environment_creates_dot_fle_data_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("FLE_DB_TYPE", "SQLITE_DB_FILE"):
        monkeypatch.delenv(var, raising=False)
    summary = as_json(invoke("--json", "demo", "--trajectories", "1", "--steps", "3"))
    database = tmp_path / ".fle" / "data.db"
    assert database.is_file()
    assert summary["backend"] == "sqlite"
    assert Path(summary["database"]) == database
    assert summary["database_bytes"] > 0
    with DatabaseClient(f"sqlite:///{database}") as db:
        assert len(db.load_steps(summary["trajectory_ids"][0])) == 3


def test_demo_rejects_too_few_steps_as_a_usage_error(db_url: str) -> None:
    result = invoke("--url", db_url, "demo", "--steps", "1")
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# -- init, migrate, status --------------------------------------------------------------------
def test_status_json_shows_current_equals_latest_after_init(db_url: str) -> None:
    before = as_json(invoke("--url", db_url, "status", "--json"))
    assert before["current_version"] is None
    assert before["pending"] and before["up_to_date"] is False
    init = invoke("--url", db_url, "init")
    assert init.exit_code == 0, init.output
    assert "Initialised" in init.stdout
    after = as_json(invoke("--url", db_url, "status", "--json"))
    assert after["current_version"] == after["latest_version"]
    assert after["pending"] == [] and after["up_to_date"] is True
    assert as_json(invoke("--url", db_url, "--json", "status")) == after  # the global flag works too


def test_status_of_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    status = as_json(invoke("--url", f"sqlite:///{path}", "--json", "status"))
    assert status["exists"] is False and status["current_version"] is None
    assert not path.exists()


def test_migrate_applies_pending_revisions_once(db_url: str) -> None:
    pending = as_json(invoke("--url", db_url, "--json", "status"))["pending"]
    first = as_json(invoke("--url", db_url, "--json", "migrate"))
    assert first["applied"] == pending
    assert first["current_version"] == first["latest_version"]
    assert as_json(invoke("--url", db_url, "--json", "migrate"))["applied"] == []
    again = invoke("--url", db_url, "migrate")
    assert again.exit_code == 0 and "Nothing to apply" in again.stdout


def test_init_prints_where_the_database_is(db_url: str) -> None:
    result = as_json(invoke("--url", db_url, "--json", "init"))
    settings_location = as_json(invoke("--url", db_url, "--json", "config"))
    assert result["location"] == settings_location["location"]
    assert result["up_to_date"] is True


# -- config -----------------------------------------------------------------------------------
def test_config_never_shows_the_password(db_url: str, backend: str) -> None:
    url = with_password(db_url) if backend == "postgres" else db_url
    outputs = [invoke("--url", url, "config"), invoke("--url", url, "--json", "config")]
    if backend == "postgres":
        outputs += [invoke("--url", url, "status"), invoke("--url", url, "init")]
    for result in outputs:
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output
    shown = as_json(outputs[1])
    assert shown["backend"] == backend
    if backend == "postgres":
        assert "***" in shown["url"]


def test_config_hides_a_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "FLE_DB_TYPE": "postgres",
        "SKILLS_DB_HOST": "db.example",
        "SKILLS_DB_NAME": "fle",
        "SKILLS_DB_USER": "agent",
        "SKILLS_DB_PASSWORD": PASSWORD,
    }.items():
        monkeypatch.setenv(var, value)
    for result in (invoke("config"), invoke("--json", "config")):
        assert result.exit_code == 0, result.output
        assert PASSWORD not in result.output
        assert "db.example" in result.output  # nothing else is hidden


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["status", "config", "init", "demo"])
def test_bad_fle_db_type_exits_2_naming_fle_db_type(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FLE_DB_TYPE", "oracle")
    assert_one_line_error(invoke(command), 2, "FLE_DB_TYPE", "oracle")


def test_unparseable_url_exits_2() -> None:
    assert_one_line_error(invoke("--url", "::not a url::", "status"), 2, "URL")


def test_show_unknown_trajectory_exits_1_with_a_clear_message(db_url: str) -> None:
    assert invoke("--url", db_url, "init").exit_code == 0
    assert_one_line_error(invoke("--url", db_url, "show", "no-such-run"), 1, "'no-such-run'", "does not exist")


def test_show_on_an_uninitialised_database_exits_1_without_creating_it(db_url: str, tmp_path: Path) -> None:
    assert_one_line_error(invoke("--url", db_url, "show", "run-1"), 1, "'run-1'", "does not exist")
    missing = tmp_path / "missing.db"
    assert_one_line_error(invoke("--url", f"sqlite:///{missing}", "show", "run-1"), 1, "no database")
    assert not missing.exists()


def test_show_malformed_trajectory_id_exits_2(db_url: str) -> None:
    assert invoke("--url", db_url, "init").exit_code == 0
    assert_one_line_error(invoke("--url", db_url, "show", "bad id;"), 2, "trajectory_id")


def test_unreachable_postgres_exits_1_without_the_password() -> None:
    result = invoke("--url", f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/none", "status")
    assert_one_line_error(result, 1)
    assert PASSWORD not in result.output


# -- show -------------------------------------------------------------------------------------
def test_show_reports_trajectory_step_count_and_latest_step(db_url: str) -> None:
    summary = as_json(invoke("--url", db_url, "--json", "demo", "--trajectories", "1", "--steps", "5"))
    tid = summary["trajectory_ids"][0]
    shown = as_json(invoke("--url", db_url, "show", tid, "--json"))
    assert shown["trajectory"]["id"] == tid
    assert shown["steps"] == 5 and shown["latest_step_number"] == 4 and shown["contiguous"] is True
    assert shown["metadata"]["seed"] == 0
    human = invoke("--url", db_url, "show", tid)
    assert human.exit_code == 0, human.output
    assert "latest step" in human.stdout and "agent_type" in human.stdout


# -- help -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_works_for_the_group_and_every_command(command: str | None) -> None:
    result = invoke(*([command] if command else []), "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    if command is None:
        for name in COMMANDS:
            assert name in result.stdout


def test_stats_reports_counts_and_sizes_as_json_and_as_a_table(db_url: str) -> None:
    from fle_db import DatabaseClient

    with DatabaseClient(db_url) as db:
        db.batch_save_steps({"trajectory_id": "s", "step_number": n, "action": "a"} for n in range(5))
    result = CliRunner().invoke(main, ["--url", db_url, "stats", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert (stats["trajectories"], stats["steps"]) == (1, 5)
    table = CliRunner().invoke(main, ["--url", db_url, "stats"])
    assert table.exit_code == 0 and "steps" in table.output and "KiB" in table.output


def test_health_exits_zero_when_ok_and_one_when_failing(db_url: str) -> None:
    ok = CliRunner().invoke(main, ["--url", db_url, "init"])
    assert ok.exit_code == 0, ok.output
    healthy = CliRunner().invoke(main, ["--url", db_url, "health", "--json"])
    assert healthy.exit_code == 0, healthy.output
    assert json.loads(healthy.output)["status"] in ("ok", "degraded")  # degraded: a SQLite with the WAL-reset bug
    failing = CliRunner().invoke(main, ["--url", "postgresql://nobody@127.0.0.1:1/none", "health"])
    assert failing.exit_code == 1
    assert "failing" in failing.output


def test_cleanup_is_a_dry_run_unless_yes(db_url: str) -> None:
    from fle_db import DatabaseClient

    with DatabaseClient(db_url) as db:
        db.save_trajectory({"id": "c1", "task": "t", "total_reward": 1.0})
        db.save_trajectory({"id": "c2", "task": "t", "total_reward": 2.0})
    dry = CliRunner().invoke(main, ["--url", db_url, "cleanup", "--keep-best", "1", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["trajectories"] == ["c1"] and json.loads(dry.output)["dry_run"] is True
    real = CliRunner().invoke(main, ["--url", db_url, "cleanup", "--keep-best", "1", "--yes"])
    assert real.exit_code == 0 and "deleted" in real.output
    with DatabaseClient(db_url) as db:
        assert db.get_statistics()["trajectories"] == 1
    nothing = CliRunner().invoke(main, ["--url", db_url, "cleanup"])
    assert nothing.exit_code == 2 and "criterion" in nothing.output


def test_optimize_validate_and_metrics_commands(db_url: str) -> None:
    from fle_db import DatabaseClient

    with DatabaseClient(db_url) as db:
        db.save_step({"trajectory_id": "o", "step_number": 0}, game_state={"x": [1] * 3000})
    optimized = CliRunner().invoke(main, ["--url", db_url, "optimize", "--json"])
    assert optimized.exit_code == 0, optimized.output
    assert json.loads(optimized.output)["actions"]
    valid = CliRunner().invoke(main, ["--url", db_url, "validate", "--json"])
    assert valid.exit_code == 0, valid.output
    assert json.loads(valid.output)["ok"] is True
    measured = CliRunner().invoke(main, ["--url", db_url, "metrics", "--json"])
    assert measured.exit_code == 0, measured.output
    assert {"health_check", "get_statistics"} <= set(json.loads(measured.output)["operations"])


def test_validate_exits_one_on_damage(make_url) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import text

    from fle_db import DatabaseClient

    url = make_url("sqlite")
    with DatabaseClient(url) as db:
        db.save_game_state({"research": ["t" * 10] * 1000})
        with db._backend.engine.begin() as conn:
            conn.execute(text("UPDATE blobs SET checksum = checksum + 1"))
    result = CliRunner().invoke(main, ["--url", url, "validate"])
    assert result.exit_code == 1 and "blob" in result.output


def test_every_command_has_help_and_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, command in main.commands.items():
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0 and command.help, name
        assert f"`fle-db {name}" in readme, f"fle-db {name} is not documented in README.md"
