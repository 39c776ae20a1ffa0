"""Misuse found by attacking fle-db as a user or an agent might (issue 12): each test names the
class of fault it proves fixed. Every behaviour runs on SQLite and PostgreSQL (``backend``)."""

from __future__ import annotations

import json
import logging
import os
import random
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from fle_db import (
    ConfigurationError,
    DatabaseClient,
    FleDBError,
    NotFoundError,
    Settings,
    ValidationError,
)
from fle_db.cli import main
from fle_db.errors import ClientClosedError
from fle_db.redact import redact


def _filled(url: str, backup_dir: Path, **options: Any) -> DatabaseClient:
    client = DatabaseClient(url, backup_dir=backup_dir, **options)
    client.save_step({"trajectory_id": "t1", "step_number": 0, "action": "a"}, game_state={"tick": 1})
    client.save_step({"trajectory_id": "t2", "step_number": 0, "action": "b"})
    return client


# -- 1. backup manifests never name paths -----------------------------------------------------
def test_a_manifest_id_is_never_used_as_a_path(db_url: str, tmp_path: Path) -> None:
    live = tmp_path / "data.db"
    live.write_bytes(b"precious")
    folder = tmp_path / "backups"
    with _filled(db_url, folder) as client:
        real = client.create_backup()
        forged = orjson.loads((folder / f"{real}.json").read_bytes())
        forged["id"] = "../data"
        forged["timestamp"] = "2000-01-01T00:00:00+00:00"
        (folder / "20000101T000000000000Z-dead.json").write_bytes(orjson.dumps(forged))
        client.prune_backups(keep=1)
        assert live.read_bytes() == b"precious"
        with pytest.raises(ValidationError):
            client.verify_backup("../data")
        assert [b["id"] for b in client.list_backups()] == [real]


def test_foreign_files_in_the_backup_folder_are_skipped(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    with _filled(db_url, folder) as client:
        real = client.create_backup()
        (folder / "list.json").write_text("[1, 2]")
        (folder / "20990101T000000000000Z-beef.json").write_text(json.dumps({"format": "fle-db-backup/1"}))
        (folder / "x.json").mkdir()
        (folder / "notes.json").write_text("not json")
        assert [b["id"] for b in client.list_backups()] == [real]
        assert client.prune_backups(keep=1) == []


@pytest.mark.parametrize("bad", ["a\x00b", "x" * 300, "", "..", "a/b", 7, None])
def test_hostile_backup_ids_are_validation_errors(tmp_path: Path, bad: Any) -> None:
    with DatabaseClient(f"sqlite:///{tmp_path / 'db.db'}", backup_dir=tmp_path / "bk") as client:
        with pytest.raises(ValidationError):
            client.verify_backup(bad)
        with pytest.raises(ValidationError):
            client.restore_backup(bad)


def test_a_backup_folder_that_is_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "bk").write_text("a file")
    with DatabaseClient(f"sqlite:///{tmp_path / 'db.db'}", backup_dir=tmp_path / "bk") as client:
        with pytest.raises(ConfigurationError):
            client.create_backup()
        with pytest.raises(ConfigurationError):
            client.list_backups()


# -- 3. paths become URLs through one escaping function --------------------------------------
def test_special_characters_in_paths_reach_the_file_system_unchanged(db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk?x=1#y%41"
    with _filled(db_url, folder) as client:
        backup_id = client.create_backup()
        (entry,) = client.list_backups()
        assert entry["size"] > 0 and os.path.getsize(folder / f"{backup_id}.db") == entry["size"]
        client.verify_backup(backup_id)
        target = tmp_path / "copy%41?v=1#x.db"
        client.copy_to(str(target))
        assert target.stat().st_size > 0 and not (tmp_path / "copyA.db").exists()
        with DatabaseClient(f"sqlite:///{target}".replace("%", "%25").replace("?", "%3F").replace("#", "%23")) as c:
            assert c.load_step("t1", 0)["action"] == "a"


def test_cli_copy_of_a_path_with_a_question_mark(tmp_path: Path) -> None:
    source = tmp_path / "src?v=1.db"
    client = DatabaseClient(f"sqlite:///{source}".replace("?", "%3F"))
    client.save_step({"trajectory_id": "t1", "step_number": 0})
    client.close()
    result = CliRunner().invoke(main, ["copy", str(source), str(tmp_path / "out.db")])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "src").exists()
    with DatabaseClient(f"sqlite:///{tmp_path / 'out.db'}") as copy:
        assert copy.load_step("t1", 0)["step_number"] == 0


# -- 4. a bare string is not a list of ids ----------------------------------------------------
def test_a_bare_string_is_refused_where_ids_are_expected(db: DatabaseClient, tmp_path: Path) -> None:
    for tid in ("1", "2", "12"):
        db.save_trajectory({"id": tid})
    with pytest.raises(ValidationError):
        db.cleanup(trajectory_ids="12")
    with pytest.raises(ValidationError):
        db.export_data(tmp_path / "x.jsonl", trajectory_ids="12")
    with pytest.raises(ValidationError):
        db.load_game_states("ab")
    assert {db.load_trajectory(t)["id"] for t in ("1", "2", "12")} == {"1", "2", "12"}


# -- 5. import writes only the trajectory it imports --------------------------------------------
def test_import_refuses_a_record_naming_another_trajectory(db_url: str, make_url: Any, tmp_path: Path) -> None:
    with DatabaseClient(db_url) as source:
        source.save_step({"trajectory_id": "A", "step_number": 0, "action": "x"})
        source.export_data(tmp_path / "e.jsonl")
    lines = (tmp_path / "e.jsonl").read_bytes().splitlines()
    checkpoint = orjson.loads(lines[2])
    checkpoint["step"]["trajectory_id"] = "B"
    lines[2] = orjson.dumps(checkpoint)
    body = b"\n".join(lines[1:3]) + b"\n"
    import hashlib

    end = orjson.loads(lines[3])
    end["digest"] = hashlib.blake2b(body, digest_size=16).hexdigest()
    lines[3] = orjson.dumps(end)
    (tmp_path / "e.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with DatabaseClient(make_url("sqlite")) as target:
        with pytest.raises(ValidationError, match="line 3"):
            target.import_data(tmp_path / "e.jsonl")
        for tid in ("A", "B"):
            with pytest.raises(NotFoundError):
                target.load_trajectory(tid)


def test_import_of_a_missing_file_is_not_found(db: DatabaseClient, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        db.import_data(tmp_path / "missing.jsonl")
    with pytest.raises(ValidationError):
        db.import_data(tmp_path)


# -- 6. one masking routine over every URL form --------------------------------------------
@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("postgresql://u:hunter2@h/db", "hunter2"),
        ("postgresql://u@h/db?password=hunter2&sslmode=require", "hunter2"),
        ("mysql://u@h/db?sslmode=x&PassWord=hunter2", "hunter2"),
        ("host=h user=u password=hunter2 dbname=x", "hunter2"),
        ("host=h password='hunter 2' dbname=x", "hunter 2"),
        ("postgresql://u@h/db?sslpassword=hunter2", "hunter2"),
    ],
)
def test_secrets_are_masked_in_every_url_form(text: str, secret: str) -> None:
    masked = redact(text)
    assert secret not in masked and "***" in masked


def test_a_password_in_the_query_never_leaks(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    url = "postgresql://nobody@127.0.0.1:1/nodb?password=hunter2&connect_timeout=1"
    settings = Settings.resolve(url)
    assert "hunter2" not in repr(settings) + settings.safe_url() + settings.location
    caplog.set_level(logging.DEBUG)
    with pytest.raises(FleDBError) as info:
        DatabaseClient(url, connection_timeout=2)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text
    for command in (["config", "--json"], ["status", "--json"]):
        result = CliRunner().invoke(main, ["--url", url, *command])
        assert "hunter2" not in result.output


# -- 7. special files are never replaced --------------------------------------------------
@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_export_never_replaces_a_special_file(db: DatabaseClient, tmp_path: Path, kind: str) -> None:
    target = tmp_path / "out.jsonl"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_text("keep")
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.mkdir()
    with pytest.raises(ValidationError):
        db.export_data(target)
    mode = os.lstat(target).st_mode
    assert {"fifo": stat.S_ISFIFO, "symlink": stat.S_ISLNK, "directory": stat.S_ISDIR}[kind](mode)


def test_sqlite_refuses_a_database_file_that_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        DatabaseClient("sqlite:////dev/null")
    os.mkfifo(tmp_path / "fifo.db")
    with pytest.raises(ConfigurationError):
        DatabaseClient(f"sqlite:///{tmp_path / 'fifo.db'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.db"]  # no -journal, -wal beside it


# -- 10. edge values are typed errors ----------------------------------------------------------
@pytest.mark.parametrize(
    "instant",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        datetime.max.replace(tzinfo=UTC),
        datetime.min.replace(tzinfo=UTC),
        "²",
        1e300,
    ],
)
def test_edge_instants_are_validation_errors(db: DatabaseClient, tmp_path: Path, instant: Any) -> None:
    with pytest.raises(ValidationError):
        db.restore_to(instant, target=str(tmp_path / "r.db"))
    with pytest.raises(ValidationError):
        db.export_data(tmp_path / "x.jsonl", since=instant)
    try:  # a far-future cutoff is a valid (sweeping) criterion; only an untyped error is wrong
        db.cleanup(before=instant, dry_run=True)
    except FleDBError:
        pass


def test_an_endless_duration_is_a_validation_error(db: DatabaseClient) -> None:
    with pytest.raises(ValidationError):
        db.cleanup(1e300)


@pytest.mark.parametrize("args", [["restore-to", "²", "--target", "x.db"], ["restore-to", "1e400", "--target", "x.db"]])
def test_cli_edge_timestamps_are_one_line_errors(tmp_path: Path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'db.db'}"
    DatabaseClient(url).close()
    result = CliRunner().invoke(main, ["--url", url, *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_export_to_a_directory_is_a_validation_error(db: DatabaseClient, tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        db.export_data(tmp_path)


# -- 11. inspection never creates a database; a closed client stays closed ----------------------
@pytest.mark.parametrize(
    "command",
    [
        ["stats"],
        ["health"],
        ["validate"],
        ["metrics"],
        ["export", "x.jsonl"],
        ["backup", "list"],
        ["restore-to", "2026-01-01T00:00:00Z"],
    ],
)
def test_inspection_commands_do_not_create_a_database(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "missing.db"
    monkeypatch.chdir(tmp_path)  # relative paths (export's file) land in the test's directory
    result = CliRunner().invoke(main, ["--url", f"sqlite:///{path}", *command])
    assert result.exit_code == 1, result.output
    assert "does not exist" in result.output and "Traceback" not in result.output
    assert not path.exists()


def test_read_methods_on_a_missing_sqlite_file_raise_not_found(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    client = DatabaseClient(f"sqlite:///{path}", auto_migrate=False)
    with pytest.raises(NotFoundError):
        client.get_statistics()
    with pytest.raises(NotFoundError):
        client.load_trajectory("t")
    health = client.health_check()
    assert health["status"] == "failing" and "no SQLite database" in health["checks"]["connectivity"]["detail"]
    assert client.get_migration_status()["current_version"] is None
    assert not path.exists()
    client.migrate()  # migrating is what creates it
    assert path.exists()
    client.close()


def test_a_closed_client_raises_instead_of_reopening(db: DatabaseClient) -> None:
    db.save_trajectory({"id": "t"})
    db.close()
    with pytest.raises(ClientClosedError):
        db.load_trajectory("t")
    with pytest.raises(ClientClosedError):
        db.save_trajectory({"id": "u"})
    db.close()  # still idempotent


# -- 5. import memory is bounded whatever the file ---------------------------------------------
_BOMB = r"""
import os, resource, sys, zstandard, orjson
from fle_db import DatabaseClient, FleDBError
url, path, shape = sys.argv[1], sys.argv[2], sys.argv[3]
MAX = 1024 * 1024
with open(path, "wb") as raw, zstandard.ZstdCompressor(level=19).stream_writer(raw) as out:
    out.write(orjson.dumps({"kind": "header", "format": "fle-db-export", "version": 1}) + b"\n")
    if shape == "endless line":  # one line of 1 GiB: never read whole
        block = b"a" * (1 << 20)
        for _ in range(1024):
            out.write(block)
    else:  # one trajectory of 600 checkpoints of ~0.5 MiB each (300 MiB), never ended
        out.write(orjson.dumps({"kind": "trajectory", "trajectory": {"id": "A"}, "metadata": {}}) + b"\n")
        action = "x" * (MAX // 2)
        for n in range(600):
            step = {"trajectory_id": "A", "step_number": n, "action": action}
            line = {"kind": "checkpoint", "trajectory_id": "A", "step_number": n, "step": step}
            out.write(orjson.dumps(line) + b"\n")
print("compressed bytes", os.path.getsize(path), file=sys.stderr)
client = DatabaseClient(url, max_payload_bytes=MAX)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:
    client.import_data(path)
    error = "none"
except FleDBError as exc:
    error = type(exc).__name__
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
stats = client.get_statistics()
result = {"error": error, "peak": peak, "trajectories": stats["trajectories"], "steps": stats["steps"]}
print(orjson.dumps(result).decode())
"""


@pytest.mark.parametrize("shape", ["endless line", "endless trajectory"])
def test_a_decompression_bomb_is_stopped_in_bounded_memory(db_url: str, tmp_path: Path, shape: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _BOMB, db_url, str(tmp_path / "bomb.jsonl.zst"), shape],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = orjson.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] in {"ValidationError", "DataIntegrityError"}, done.stderr
    assert result["peak"] <= 2 * 1024 * 1024 + 100 * 2**20, result
    assert (result["trajectories"], result["steps"]) == (0, 0)


# -- 5. export memory is bounded too, whatever the data ---------------------------------------------
_EXPORT = r"""
import resource, sys, orjson
from fle_db import DatabaseClient
url, path = sys.argv[1], sys.argv[2]
client = DatabaseClient(url, max_payload_bytes=int(sys.argv[3]))
if sys.argv[4] == "parquet":
    import pyarrow.parquet  # the library's own size (~60 MB) is not data held
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = client.export_data(path, sys.argv[4])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
print(orjson.dumps({"peak": peak, "checkpoints": result["checkpoints"]}).decode())
"""


def _fill_for_export(client: DatabaseClient, shape: str, max_payload: int) -> int:
    """A trajectory of 100,000 small checkpoints, or of 48 distinct game states of ~0.9 x
    ``max_payload`` each (numbers: their Python objects are ~4x their JSON)."""
    if shape == "many steps":
        for start in range(0, 100_000, 2_000):
            client.batch_save_steps(
                [
                    {"trajectory_id": "A", "step_number": n, "action": f"move {n}",
                     "agent_output": {"code": f"place({n})"}, "environment_feedback": {"stdout": f"ok {n}"}}
                    for n in range(start, start + 2_000)
                ]
            )  # fmt: skip
        return 100_000
    rng = random.Random(12)
    for n in range(48):
        numbers = [rng.randrange(10**8) for _ in range(max_payload // 10)]
        client.save_step({"trajectory_id": "A", "step_number": n, "action": "a"}, game_state={"entities": numbers})
    return 48


@pytest.mark.parametrize("shape", ["many steps", "large states"])
def test_export_memory_is_bounded_by_bytes_whatever_the_data(db_url: str, tmp_path: Path, shape: str) -> None:
    import subprocess
    import sys

    max_payload = 1024 * 1024
    with DatabaseClient(db_url, max_payload_bytes=max_payload) as client:
        checkpoints = _fill_for_export(client, shape, max_payload)
    # parquet with states near the limit measured +92..98 MiB against this 102 MiB budget (it was
    # +185 MiB before row groups were cut at max_payload_bytes): within it, but too close to assert
    # on a loaded machine, so that case is asserted for jsonl only.
    for fmt in ("jsonl", "parquet") if shape == "many steps" else ("jsonl",):
        done = subprocess.run(
            [sys.executable, "-c", _EXPORT, db_url, str(tmp_path / f"out.{fmt}"), str(max_payload), fmt],
            capture_output=True,
            text=True,
            timeout=600,
            check=True,
        )
        result = orjson.loads(done.stdout.strip().splitlines()[-1])
        assert result["checkpoints"] == checkpoints
        assert result["peak"] <= 2 * max_payload + 100 * 2**20, (fmt, result)
