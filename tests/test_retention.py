"""Retention policies: the grammar (strict, hostile inputs), the setting, apply_retention on old
and new runs, the backup schedule, and the ``fle-db thin`` / ``retention`` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import ALL_BACKENDS
from sqlalchemy import text

from fle_db import ConfigurationError, DatabaseClient, StateThinnedError, ValidationError
from fle_db.cli import main
from fle_db.config import Settings
from fle_db.retention import DeleteClause, RetentionPolicy, ThinClause, parse

DAY_US = 86_400 * 1_000_000
POLICY = (
    "thin states older than 30 days to every 10th; delete trajectories older than 180 days except the best 2 per task"
)


@pytest.fixture(params=ALL_BACKENDS)
def any_url(request: pytest.FixtureRequest, make_url: Any) -> str:
    return str(make_url(request.param))


@pytest.fixture
def any_db(any_url: str) -> Iterator[DatabaseClient]:
    client = DatabaseClient(any_url, retention=POLICY)
    yield client
    client.close()


def test_the_example_policy_parses_to_its_rules_and_back() -> None:
    policy = parse(POLICY)
    assert policy == RetentionPolicy(
        ThinClause(timedelta(days=30), 10), DeleteClause(timedelta(days=180), keep_best_per_task=2)
    )
    assert parse(policy.text) == policy and policy.text == POLICY
    loose = parse("  DELETE   trajectories older than 2 weeks ;\n thin states older than 1 hour to every 3rd ")
    assert loose == RetentionPolicy(ThinClause(timedelta(hours=1), 3), DeleteClause(timedelta(days=14), None))
    assert loose.text == "thin states older than 1 hour to every 3rd; delete trajectories older than 2 weeks"
    assert parse("thin states older than 90 minutes to every 1st").thin == ThinClause(timedelta(minutes=90), 1)


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        ("", "empty rule"),
        (";", "empty rule"),
        ("thin states older than 30 days to every 10th;", "empty rule"),
        ("thin states older than 30 days", "'thin states older than 30 days'"),
        ("thin states older than thirty days to every 10th", "thirty"),
        ("thin states older than 30 days to every 0th", "count of 0"),
        ("thin states older than 0 days to every 10th", "count of 0"),
        ("thin states older than -3 days to every 10th", "-3"),
        ("thin states older than 30 days to every 10th; thin states older than 9 days to every 2nd", "more than one"),
        ("delete trajectories older than 1 day; delete trajectories older than 2 days", "more than one"),
        ("delete trajectories older than 180 days except the best 0 per task", "count of 0"),
        ("delete trajectories older than 180 days except the worst 5 per task", "worst"),
        ("delete trajectories older than 999999 weeks", "100 years"),
        ("delete trajectories older than 1234567 days", "1234567"),
        ("delete trajectories older than 3 fortnights", "fortnights"),
        ("delete everything", "delete everything"),
        ("thin states older than 30 days to every 10th\x00", "control character"),
        ("x" * 1001, "limit"),
        ("thin states older than 1e3 days to every 10th", "1e3"),
        ("thin states older than 30 days to every 10th extra", "extra"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_bad_rule(policy: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match="retention") as caught:
        parse(policy)
    assert named in str(caught.value)


@pytest.mark.parametrize("value", [None, 5, b"thin", ["thin"], object()])
def test_a_policy_must_be_a_string(value: object) -> None:
    with pytest.raises(ConfigurationError, match="must be a string"):
        parse(value)


def test_the_setting_comes_from_the_argument_or_the_environment() -> None:
    url = "sqlite:////tmp/unused.db"
    assert Settings.resolve(url, environ={}).retention is None
    assert Settings.resolve(url, environ={"FLE_DB_RETENTION": ""}).retention is None
    from_env = Settings.resolve(url, environ={"FLE_DB_RETENTION": POLICY}).retention
    assert from_env == parse(POLICY)
    given = Settings.resolve(
        url, retention="delete trajectories older than 1 day", environ={"FLE_DB_RETENTION": POLICY}
    )
    assert given.retention == parse("delete trajectories older than 1 day")
    with pytest.raises(ConfigurationError, match="FLE_DB_RETENTION: cannot parse the rule 'keep it all'"):
        Settings.resolve(url, environ={"FLE_DB_RETENTION": "keep it all"})
    with pytest.raises(ConfigurationError, match=r"^retention: cannot parse"):
        Settings.resolve(url, retention="keep it all", environ={})


def _run(db: DatabaseClient, tid: str, task: str, reward: float | None, steps: int = 25) -> None:
    db.save_trajectory({"id": tid, "task": task, "total_reward": reward})
    for n in range(steps):
        db.save_step({"trajectory_id": tid, "step_number": n, "action": f"a{n}"},
                     game_state={"tick": n, "who": tid, "map": list(range(n, n + 300))})  # fmt: skip


def _age(db: DatabaseClient, days: int, *tids: str) -> None:
    """Date the trajectories and their steps ``days`` back (what cleanup's age criteria read)."""
    ids = ", ".join(f"'{tid}'" for tid in tids)
    with db._backend.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text(f"UPDATE trajectories SET created_at = created_at - {days * DAY_US}, "
                          f"updated_at = updated_at - {days * DAY_US} WHERE id IN ({ids})"))  # fmt: skip
        conn.execute(text(f"UPDATE steps SET created_at = created_at - {days * DAY_US} WHERE trajectory_id IN ({ids})"))


def _thinned(db: DatabaseClient, tid: str) -> list[int]:
    gone = []
    for step in db.load_steps(tid):
        try:
            db.load_checkpoint(tid, step["step_number"])
        except StateThinnedError:
            gone.append(step["step_number"])
    return gone


def _fill(db: DatabaseClient) -> None:
    """Very old runs (200 days: a1..a4 of "iron", b1 of "copper"), a 60-day-old run (m1), new runs
    (n1, and nf: a fork of a1 at step 12)."""
    for tid, task, reward in [("a1", "iron", 1.0), ("a2", "iron", 5.0), ("a3", "iron", 3.0), ("a4", "iron", None),
                              ("b1", "copper", 2.0), ("m1", "iron", 0.5), ("n1", "iron", 0.1)]:  # fmt: skip
        _run(db, tid, task, reward)
    db.save_trajectory({"id": "nf", "task": "iron", "parent_trajectory_id": "a1", "parent_step_number": 12})
    _run(db, "nf", "iron", 0.2, steps=0)
    db.save_step({"trajectory_id": "nf", "step_number": 13, "action": "go"}, game_state={"tick": 13})
    _age(db, 200, "a1", "a2", "a3", "a4", "b1")
    _age(db, 60, "m1")


def test_apply_retention_on_old_and_new_runs_keeps_exactly_what_it_should(any_db: DatabaseClient) -> None:
    db = any_db
    _fill(db)
    dry = db.apply_retention(dry_run=True)
    assert dry["dry_run"] is True and dry["policy"] == POLICY
    assert dry["delete"]["trajectories"] == ["a4"] and dry["delete"]["kept_for_lineage"] == ["a1"]
    assert _thinned(db, "m1") == [] and len(db.load_steps("a4")) == 25  # a dry run changes nothing
    report = db.apply_retention()
    assert report["delete"]["trajectories"] == ["a4"] and report["delete"]["kept_for_lineage"] == ["a1"]
    assert report["thin"]["trajectories"] == ["a1", "a2", "a3", "b1", "m1"]
    remaining = {row["id"] for row in db.list_trajectories(limit=100)["trajectories"]}
    assert remaining == {"a1", "a2", "a3", "b1", "m1", "n1", "nf"}
    dropped = [n for n in range(25) if n % 10 and n != 24]
    for tid in ("a2", "a3", "b1", "m1"):
        assert _thinned(db, tid) == dropped, tid
        assert len(db.load_steps(tid)) == 25
    assert _thinned(db, "a1") == [n for n in dropped if n != 12]  # nf forks from a1's step 12
    assert _thinned(db, "n1") == [] and _thinned(db, "nf") == []
    assert db.load_latest_checkpoint("a2")["game_state"]["tick"] == 24  # type: ignore[index]
    assert db.validate()["ok"]
    again = db.apply_retention()
    assert again["delete"]["trajectories"] == [] and again["thin"]["game_states"] == 0


def test_automated_backups_apply_the_policy(any_db: DatabaseClient, tmp_path: Path) -> None:
    _fill(any_db)
    scheduler = DatabaseClient(
        any_db.settings.url.render_as_string(hide_password=False), retention=POLICY, backup_dir=str(tmp_path)
    )
    try:
        assert scheduler.backup_scheduler(3600, 2).run_once() is not None
    finally:
        scheduler.close()
    assert _thinned(any_db, "m1") and _thinned(any_db, "n1") == []
    assert "a4" not in {row["id"] for row in any_db.list_trajectories(limit=100)["trajectories"]}


def test_apply_retention_needs_a_policy_and_refuses_a_bad_one(any_url: str) -> None:
    with DatabaseClient(any_url) as db:
        with pytest.raises(ValidationError, match="no retention policy"):
            db.apply_retention()
        with pytest.raises(ConfigurationError, match="policy: cannot parse"):
            db.apply_retention("thin everything")
        with pytest.raises(ValidationError, match="dry_run"):
            db.apply_retention(POLICY, dry_run="no")  # type: ignore[arg-type]
        assert db.apply_retention("delete trajectories older than 1 day")["delete"]["trajectories"] == []


def _cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_the_thin_and_retention_commands(any_url: str) -> None:
    with DatabaseClient(any_url) as db:
        _fill(db)
    dry = _cli("--url", any_url, "thin", "--id", "m1", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["dry_run"] is True and json.loads(dry.stdout)["game_states"] == 21
    table = _cli("--url", any_url, "thin", "--id", "m1", "--keep-every", "5", "--yes")
    assert table.exit_code == 0 and "states dropped" in table.output
    assert _cli("--url", any_url, "thin", "--id", "m1", "--dry-run", "--yes").exit_code == 2
    assert "criterion" in _cli("--url", any_url, "thin").output
    assert _cli("--url", any_url, "thin", "--id", "m1", "--keep-every", "0").exit_code == 2
    shown = _cli("retention", "show", "--policy", POLICY, "--json")
    assert json.loads(shown.stdout)["delete"] == {"older_than_days": 180.0, "keep_best_per_task": 2}
    bad = _cli("--url", any_url, "retention", "apply", "--policy", "delete it all")
    assert bad.exit_code != 0 and "cannot parse the rule 'delete it all'" in bad.output
    dry_apply = _cli("--url", any_url, "retention", "apply", "--policy", POLICY, "--json")
    assert json.loads(dry_apply.stdout)["delete"]["trajectories"] == ["a4"]
    real = _cli("--url", any_url, "retention", "apply", "--policy", POLICY, "--yes")
    assert real.exit_code == 0 and "deleted" in real.output
    with DatabaseClient(any_url) as db:
        assert "a4" not in {row["id"] for row in db.list_trajectories(limit=100)["trajectories"]}
        assert _thinned(db, "b1") and db.validate()["ok"]
