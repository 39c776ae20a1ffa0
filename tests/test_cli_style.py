"""One output style and errors in the user's words: IEC sizes, ``stats`` of what users saved,
80-column tables, labelled warnings once per process (none about the SQLite library on
read-only commands), ``restore-to`` without flags, validation and configuration messages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from fle_db import DatabaseClient
from fle_db.cli import main
from fle_db.errors import ConfigurationError, ValidationError
from fle_db.units import iec_bytes

PASSWORD = "hunter2-secret"
#: Sizes written the old ways: decimal units, "KB"/"MB", or a bare byte count after "size".
NOT_IEC = re.compile(r"\d (?:KB|MB|GB)\b|\d MiB \(|size\s+│?\s*\d{4,}\b")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_iec_bytes_formats_sizes_in_powers_of_1024() -> None:
    assert [iec_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 2**20 + 2**19, 3 * 2**30, 2**50 * 2000)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.5 MiB",
        "3.0 GiB",
        "2,000.0 PiB",
    ]
    assert iec_bytes(1024 * 1024 - 1) == "1.0 MiB"  # never "1024.0 KiB"
    assert iec_bytes(-2048) == "-2.0 KiB"


def test_every_size_the_cli_prints_is_in_iec_units(db_url: str, tmp_path: Path) -> None:
    backups = str(tmp_path / "bk")
    demo = invoke("--url", db_url, "demo", "--trajectories", "2", "--steps", "3")
    assert re.search(r"database size\s+│\s+[\d.]+ (?:KiB|MiB)", demo.stdout), demo.stdout
    outputs = [demo.stdout]
    for args in (["stats"], ["stats", "--all"], ["config"], ["optimize"], ["cleanup", "--task", "none"]):
        result = invoke("--url", db_url, *args)
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
    env = {"FLE_DB_BACKUP_DIR": backups}
    runner = CliRunner(env=env)
    for args in (["backup", "create"], ["backup", "list"]):
        result = runner.invoke(main, ["--url", db_url, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append(result.stdout)
    for out in outputs:
        assert not NOT_IEC.search(out), out
        assert "iB" in out or "config" in out or "cleanup" in out


def test_stats_shows_what_users_saved_and_the_search_nodes_internal_tables_with_all(db_url: str) -> None:
    with DatabaseClient(db_url) as db:
        db.append_step("s", {"action": "a"}, node={"tree": "t", "depth": 0, "value": 1.0})
    default = invoke("--url", db_url, "stats")
    assert default.exit_code == 0, default.output
    assert "search nodes" in default.stdout and "1" in default.stdout
    assert "_history" not in default.stdout and "commit_log" not in default.stdout
    assert "internal tables" in default.stdout and "--all" in default.stdout
    everything = invoke("--url", db_url, "stats", "--all")
    assert "steps_history" in everything.stdout and "commit_log" in everything.stdout
    assert json.loads(invoke("--url", db_url, "stats", "--json").stdout)["search_nodes"] == 1


def test_backup_list_fits_80_columns_and_keeps_each_backup_id_on_one_line(db_url: str, tmp_path: Path) -> None:
    runner = CliRunner(env={"FLE_DB_BACKUP_DIR": str(tmp_path / "bk")})
    with DatabaseClient(db_url, backup_dir=tmp_path / "bk") as db:
        db.save_step({"trajectory_id": "b", "step_number": 0})
        backup_id = db.create_backup()
    listed = runner.invoke(main, ["--url", db_url, "backup", "list"], catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    assert any(line.split()[:1] == [backup_id] for line in listed.stdout.splitlines())


def test_restore_to_without_flags_prints_the_recovery_window_and_exits_0(db_url: str) -> None:
    with DatabaseClient(db_url) as db:
        db.save_trajectory({"id": "kept"})
    for args in (["restore-to"], ["restore-to", "2026-01-01T00:00:00Z"]):
        result = invoke("--url", db_url, *args)
        assert result.exit_code == 0, result.output
        assert "point-in-time recovery window:" in result.stdout and "--yes" in result.stdout
    window = json.loads(invoke("--url", db_url, "--json", "restore-to").stdout)["recovery_window"]
    assert window["from"] <= window["to"]
    refused = invoke("--url", db_url, "restore-to", "--yes")
    assert refused.exit_code == 2 and "TIMESTAMP" in refused.stderr
    with DatabaseClient(db_url) as db:
        assert db.load_trajectory("kept")["id"] == "kept"  # nothing was restored


# -- warnings -----------------------------------------------------------------------------------
def _fle_db(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``fle-db ARGS`` in a new process on the stdlib driver (chosen by the URL), whose SQLite library
    reports a version with the WAL-reset bug."""
    script = (
        "import sqlite3, sys\n"
        "sqlite3.sqlite_version_info = (3, 45, 0)\n"
        "from fle_db.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    url = f"sqlite+pysqlite:///{tmp_path / 'w.db'}"
    env = {**os.environ, "FLE_DB_BACKUP_DIR": str(tmp_path / "bk")}
    return subprocess.run(
        [sys.executable, "-c", script, "--url", url, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_warnings_are_labelled_on_stderr_once_and_absent_from_read_only_commands(tmp_path: Path) -> None:
    demo = _fle_db(tmp_path, "demo", "--trajectories", "2", "--steps", "3")
    assert demo.returncode == 0, demo.stderr
    warnings = [line for line in demo.stderr.splitlines() if "WAL-reset bug" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: SQLite 3.")
    assert "WAL-reset" not in demo.stdout
    tid = next(word for word in demo.stdout.split() if word.startswith("demo-"))
    for args in (["list"], ["show", tid, "--step", "0"], ["stats"], ["status"], ["health"], ["restore-to"]):
        result = _fle_db(tmp_path, *args)
        assert result.returncode == 0, (args, result.stderr)
        assert "WAL-reset" not in result.stderr, args  # (health reports it as one of its checks, on stdout)


# -- errors in the user's words -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda db: db.save_trajectory({"trajectory_id": "run-2"}),
            "a trajectory needs 'id' (got keys: trajectory_id) — did you mean save_step?",
        ),
        (
            lambda db: db.save_step({"id": "run-2", "step_number": 0}),
            "a step needs 'trajectory_id' (got keys: id, step_number) — did you mean save_trajectory?",
        ),
        (lambda db: db.save_step({"trajectory_id": "r"}), "a step needs 'step_number' (got keys: trajectory_id)"),
        (
            lambda db: db.save_step({"trajectory_id": "r", "step_number": "1"}),
            "a step's 'step_number' must be an integer in 0 .. 2**63-1 (got '1', a str)",
        ),
        (
            lambda db: db.save_trajectory({"id": "run 2"}),
            "a trajectory's 'id' must be an id: 1-200 letters, digits and _ . : - (got 'run 2', a str)",
        ),
        (
            lambda db: db.save_trajectory({"id": "r", "total_reward": "9", "success": 1}),
            "a trajectory's 'total_reward' must be a number (got '9', a str); "
            "a trajectory's 'success' must be true or false (got 1, an int)",
        ),
        (
            lambda db: db.save_trajectory({"id": "r", "task": "x" * 201, "agent_type": "a\x00b"}),
            "a trajectory's 'task' must be at most 200 characters (got 'xxxx",
        ),
        (
            lambda db: db.save_trajectory({"id": "r", "agent_type": "a\x00b"}),
            "a trajectory's 'agent_type' must be text without NUL characters",
        ),
        (
            lambda db: db.batch_save_steps([{"trajectory_id": "r", "step_number": 0}, {"trajectory_id": "r"}]),
            "batch element 1: a step needs 'step_number'",
        ),
        (
            lambda db: db.save_step(
                {"trajectory_id": "r", "step_number": 0}, agent_output={"code": 1, "step_number": 0}
            ),
            None,  # agent outputs keep any keys: nothing to refuse
        ),
    ],
)
def test_validation_errors_name_the_record_the_field_and_what_to_do(
    db: DatabaseClient, call: Any, expected: str | None
) -> None:
    if expected is None:
        call(db)
        return
    with pytest.raises(ValidationError) as raised:
        call(db)
    message = str(raised.value)
    assert expected in message
    for pydantic_words in ("Field required", "should be", "Input should", "valid integer", "pattern"):
        assert pydantic_words not in message


def test_a_configuration_error_lists_every_missing_variable_and_masks_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("SKILLS_DB_HOST", "SKILLS_DB_NAME", "SKILLS_DB_USER", "SKILLS_DB_SSLMODE", "SKILLS_DB_SSLROOTCERT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLE_DB_TYPE", "postgres")
    monkeypatch.setenv("SKILLS_DB_PORT", "54321")
    monkeypatch.setenv("SKILLS_DB_PASSWORD", PASSWORD)
    with pytest.raises(ConfigurationError) as raised:
        DatabaseClient()
    message = str(raised.value)
    assert "SKILLS_DB_HOST, SKILLS_DB_NAME and SKILLS_DB_USER are not set" in message
    assert "SKILLS_DB_PORT='54321'" in message and "SKILLS_DB_PASSWORD=***" in message
    assert PASSWORD not in message
    monkeypatch.setenv("SKILLS_DB_HOST", "db.example")
    monkeypatch.setenv("SKILLS_DB_PORT", "70000")
    result = invoke("status")
    assert result.exit_code == 2 and PASSWORD not in result.output
    line = result.stderr.strip()
    assert "SKILLS_DB_NAME and SKILLS_DB_USER are not set" in line and "SKILLS_DB_PORT must be in 1..65535" in line
    assert "SKILLS_DB_HOST='db.example'" in line
