"""``fle-db backup``, ``restore-to`` and ``copy`` on every backend, and an automated schedule
killed mid-backup."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner, Result

from fle_db import DatabaseClient
from fle_db.cli import main


def run(folder: Path, *args: str) -> Result:
    return CliRunner(env={"FLE_DB_BACKUP_DIR": str(folder)}).invoke(main, list(args), catch_exceptions=False)


def ok_json(result: Result) -> dict:  # type: ignore[type-arg]
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _fill(url: str, trajectories: int = 2, steps: int = 4) -> None:
    with DatabaseClient(url, backup_interval=0) as db:
        for t in range(trajectories):
            for n in range(steps):
                db.save_step(
                    {"trajectory_id": f"t{t}", "step_number": n, "action": f"a{n}"},
                    game_state={"tick": n, "research": {"techs": [f"tech-{i}" for i in range(400)]}, "t": t},
                )


def test_backup_commands_create_list_verify_restore_and_prune(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk"
    _fill(db_url)
    created = ok_json(run(folder, "--url", db_url, "--json", "backup", "create"))
    listed = ok_json(run(folder, "--url", db_url, "backup", "list", "--json"))
    assert [b["id"] for b in listed["backups"]] == [created["id"]]
    assert listed["recovery_window"]["to_seq"] >= 8
    assert ok_json(run(folder, "--url", db_url, "--json", "backup", "verify", created["id"]))["ok"] is True
    refused = run(folder, "--url", db_url, "backup", "restore", created["id"])
    assert refused.exit_code == 2 and "--yes" in refused.stderr
    target = tmp_path / "restored.db"
    ok_json(run(folder, "--url", db_url, "--json", "backup", "restore", created["id"], "--target", str(target)))
    with DatabaseClient(f"sqlite:///{target}", backup_interval=0) as copy:
        assert [s["action"] for s in copy.load_steps("t1")] == ["a0", "a1", "a2", "a3"]
    restored = ok_json(run(folder, "--url", db_url, "--json", "backup", "restore", created["id"], "--yes"))
    assert restored["safety_backup"]
    pruned = ok_json(run(folder, "--url", db_url, "--json", "backup", "prune", "--keep", "1"))
    assert pruned["deleted"] == [created["id"]]
    missing = run(folder, "--url", db_url, "backup", "verify", "20990101T000000000000Z-0000")
    assert missing.exit_code == 1 and missing.stderr.startswith("Error: no backup")


def test_restore_to_command_rewinds_into_a_target_or_in_place_with_yes(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk"
    _fill(db_url, trajectories=1)
    time.sleep(0.002)
    at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    time.sleep(0.002)
    with DatabaseClient(db_url, backup_interval=0) as db:
        db.delete_trajectory("t0")
    window_only = run(folder, "--url", db_url, "restore-to", at)  # no --target, no --yes: nothing restored
    assert window_only.exit_code == 0 and "point-in-time recovery window:" in window_only.stdout
    with DatabaseClient(db_url, backup_interval=0) as db:
        assert db.get_statistics()["trajectories"] == 0
    target = tmp_path / "past.db"
    ok_json(run(folder, "--url", db_url, "--json", "restore-to", at, "--target", str(target)))
    with DatabaseClient(f"sqlite:///{target}", backup_interval=0) as past:
        assert len(past.load_steps("t0")) == 4
    report = ok_json(run(folder, "--url", db_url, "--json", "restore-to", at, "--yes"))
    assert report["safety_backup"]
    with DatabaseClient(db_url, backup_interval=0) as db:
        assert len(db.load_steps("t0")) == 4
    bad = run(folder, "--url", db_url, "restore-to", "last tuesday", "--yes")
    assert bad.exit_code == 2 and "ISO 8601" in bad.stderr


def test_copy_command_moves_a_database_to_the_other_backend_with_a_progress_bar(
    db_url: str, tmp_path: Path, make_url: Callable[[str], str]
) -> None:
    _fill(db_url)
    other = make_url("postgres" if db_url.startswith("sqlite") else "sqlite")
    result = run(tmp_path, "copy", db_url, other)
    assert result.exit_code == 0, result.output
    assert "steps" in result.stderr  # the progress bar names each table
    with DatabaseClient(db_url, backup_interval=0) as a, DatabaseClient(other, backup_interval=0) as b:
        for tid in ("t0", "t1"):
            assert a.load_steps(tid) == b.load_steps(tid)
            state_id = a.load_steps(tid)[-1]["game_state_id"]
            assert a.load_game_state(state_id) == b.load_game_state(state_id)
    again = run(tmp_path, "copy", db_url, other)
    assert again.exit_code == 1 and "not empty" in again.stderr


def test_a_schedule_killed_mid_backup_never_leaves_a_broken_backup_listed(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk"
    _fill(db_url, trajectories=4, steps=10)
    env = {**os.environ, "FLE_DB_BACKUP_DIR": str(folder)}
    command = [sys.executable, "-c", "from fle_db.cli import main; main()", "--url", db_url]
    command += ["backup", "schedule", "--every", "0.01", "--keep", "3"]
    rng = random.Random(7)

    def wait_for(pattern: str) -> None:
        deadline = time.monotonic() + 60
        while not list(folder.glob(pattern)):
            assert time.monotonic() < deadline, f"no {pattern} appeared"
            time.sleep(0.002)

    killed_mid_backup = 0
    for round_ in range(5):
        for leftover in folder.glob("*.db.tmp*"):  # the previous run's, so the next wait sees a new one
            leftover.unlink()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if round_ == 0:
            wait_for("*.json")  # one backup completes...
        wait_for("*.db.tmp")  # ...then the next one starts and is killed somewhere inside
        time.sleep(rng.uniform(0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        killed_mid_backup += bool(list(folder.glob("*.db.tmp*")))
    assert killed_mid_backup >= 3
    with DatabaseClient(db_url, backup_dir=str(folder), backup_interval=0) as db:
        listed = db.list_backups()
        assert listed, "no backup completed in 5 runs"
        for entry in listed:
            assert entry["verified"]
            assert db.verify_backup(entry["id"])["ok"]
        db.create_backup()  # sweeps what the killed runs left
    assert not list(folder.glob("*.tmp*"))


def test_a_schedule_stops_cleanly_on_sigterm(db_url: str, tmp_path: Path) -> None:
    """``fle-db backup schedule`` under systemd or docker: SIGTERM stops it (exit 0), waiting for
    a backup in progress, and every backup it made is complete and listed."""
    folder = tmp_path / "bk"
    _fill(db_url, trajectories=2, steps=4)
    env = {**os.environ, "FLE_DB_BACKUP_DIR": str(folder)}
    command = [sys.executable, "-c", "from fle_db.cli import main; main()", "--url", db_url]
    command += ["backup", "schedule", "--every", "0.01", "--keep", "3"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("backing up")  # the first backup is done, the loop runs
    time.sleep(0.2)  # the scheduler thread is (likely) inside a backup now
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.strip().endswith("stopped")
    assert not list(folder.glob("*.tmp*")) and not list(folder.glob(".work-*"))
    with DatabaseClient(db_url, backup_dir=str(folder), backup_interval=0) as db:
        assert db.list_backups() and all(entry["verified"] for entry in db.list_backups())
