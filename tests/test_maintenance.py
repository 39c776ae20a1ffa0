"""optimize() and validate(): maintenance with a report, and a full check that names problems."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from fle_db import BackendUnavailableError, DatabaseClient
from fle_db.workload import Workload


def _fill(db: DatabaseClient, trajectories: int = 2, steps: int = 6) -> None:
    work = Workload(4)
    for n in range(steps):
        for t in range(trajectories):
            cp = work.checkpoint(t, n, f"v{t}")
            db.save_step(
                cp["step"], agent_output=cp["agent_output"], environment_feedback=cp["environment_feedback"],
                game_state=cp["game_state"],
            )  # fmt: skip


def _execute(db: DatabaseClient, sql: str, **params: object) -> None:
    with db._backend.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text(sql), params)


def test_a_sound_database_validates_clean(db: DatabaseClient) -> None:
    _fill(db)
    stages: list[str] = []
    report = db.validate(progress=lambda stage, done: stages.append(stage))
    assert report == {**report, "ok": True, "problems": []}
    assert report["checked"]["trajectories"] == 2 and report["checked"]["records"] == 36
    assert report["checked"]["blobs"] > 0


def test_validate_names_a_blob_with_flipped_bytes(db: DatabaseClient) -> None:
    _fill(db)
    with db._backend.engine.connect() as conn:  # type: ignore[attr-defined]
        blob_id, body = conn.execute(text("SELECT id, body FROM blobs ORDER BY length(body) DESC")).first()  # type: ignore[misc]
    damaged = bytearray(body)
    damaged[len(damaged) // 2] ^= 0x40
    _execute(db, "UPDATE blobs SET body = :b WHERE id = :i", b=bytes(damaged), i=blob_id)
    report = db.validate()
    assert report["ok"] is False
    assert [p["where"] for p in report["problems"] if p["kind"] == "blob"] == [f"blob {blob_id}"]
    assert "CRC-32" in report["problems"][0]["detail"]


def test_validate_names_damaged_records_dangling_lineage_and_gaps(db: DatabaseClient) -> None:
    _fill(db)
    _execute(db, "UPDATE agent_outputs SET body = :b WHERE trajectory_id = 'v1' AND step_number = 3", b=b"\x00garbage")
    db.save_trajectory({"id": "fork", "parent_trajectory_id": "v0", "parent_step_number": 2})
    _execute(db, "UPDATE trajectories SET parent_step_number = 99 WHERE id = 'fork'")
    db.batch_save_steps([{"trajectory_id": "gappy", "step_number": n} for n in (0, 1, 5)])
    problems = db.validate()["problems"]
    kinds = {(p["severity"], p["kind"], p["where"]) for p in problems}
    assert ("error", "record", "agent_outputs of trajectory 'v1'") in kinds
    assert ("error", "lineage", "trajectory 'fork'") in kinds
    assert ("warning", "numbering", "trajectory 'gappy'") in kinds
    gap = next(p for p in problems if p["kind"] == "numbering")
    assert "3 missing" in gap["detail"]


def test_a_truncated_sqlite_file_gives_a_clear_error_and_validate_reports_it(make_url) -> None:  # type: ignore[no-untyped-def]
    url = make_url("sqlite")
    with DatabaseClient(url) as db:
        _fill(db, trajectories=4, steps=10)
        db.optimize()  # fold the WAL into the file
        path = db.settings.url.database
    assert path is not None
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(BackendUnavailableError, match=r"malformed|not a database|corrupt"):
        DatabaseClient(url).load_steps("v0")
    with DatabaseClient(url, auto_migrate=False) as db:
        report = db.validate()
    assert report["ok"] is False
    assert report["problems"][0]["kind"] == "structure"


def test_optimize_reports_its_actions_and_shrinks_sqlite_after_cleanup(db: DatabaseClient) -> None:
    _fill(db, trajectories=3, steps=8)
    db.cleanup(trajectory_ids=["v0", "v1"])
    report = db.optimize(vacuum=True, reindex=True)
    actions = [a["action"] for a in report["actions"]]
    assert all(a["ms"] >= 0 for a in report["actions"])
    if db.settings.backend == "sqlite":
        assert actions == ["analyze", "reindex", "vacuum", "wal_checkpoint"]
        assert report["size_after"] < report["size_before"]
    else:
        assert actions[0] == "vacuum_analyze" and any(a.startswith("reindex") for a in actions)
    assert db.validate()["ok"]
    assert len(db.load_steps("v2")) == 8


def test_postgres_validation_runs_amcheck_when_installed(make_url) -> None:  # type: ignore[no-untyped-def]
    with DatabaseClient(make_url("postgres")) as db:
        _fill(db, trajectories=1, steps=3)
        _execute(db, "CREATE EXTENSION IF NOT EXISTS amcheck")
        checked = []
        original = db._backend._structure_problems  # type: ignore[attr-defined]

        def spy(conn):  # type: ignore[no-untyped-def]
            problems = original(conn)
            checked.append(conn.execute(text("SELECT count(*) FROM pg_extension WHERE extname = 'amcheck'")).scalar())
            return problems

        db._backend._structure_problems = spy  # type: ignore[attr-defined]
        assert db.validate()["ok"] is True
        assert checked == [1]
