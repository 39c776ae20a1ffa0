"""Migrations: automatic, locked against parallel starts, lossless, and matching the schema."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import ALL_BACKENDS
from sqlalchemy import create_engine, text

from fle_db import DatabaseClient, SchemaVersionError, Settings
from fle_db import migrations as fle_migrations
from fle_db.schema import VERSION_TABLE, metadata
from fle_db.storage import codec

FIRST, HEAD = "0001_initial", fle_migrations.latest_revision()
ALL = fle_migrations.pending_revisions(None)


@pytest.fixture(params=ALL_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Migrations are where backends differ most: every test here runs on MySQL/MariaDB too."""
    return str(request.param)


def _engine(url: str):  # type: ignore[no-untyped-def]
    return create_engine(Settings.resolve(url).url)


def _blob(value: object) -> tuple[str, bytes, str]:
    raw = codec.canonical_json(value, "test", 10**8)
    tag, body = codec.pack(raw)
    return tag, body, codec.digest(raw)


def test_fresh_database_reports_every_revision_pending(db_url: str) -> None:
    with DatabaseClient(db_url, auto_migrate=False) as db:
        status = db.get_migration_status()
        assert status["current_version"] is None
        assert status["latest_version"] == HEAD
        assert status["pending"] == ALL and ALL[0] == FIRST and ALL[-1] == HEAD
        assert db.migrate() == ALL
        assert db.migrate() == []
        assert db.get_migration_status() == {
            "current_version": HEAD,
            "latest_version": HEAD,
            "pending": [],
            "up_to_date": True,
        }


def test_database_at_first_revision_migrates_to_head_with_nothing_lost(db_url: str) -> None:
    engine = _engine(db_url)
    with engine.begin() as conn:
        fle_migrations.upgrade(conn, FIRST)
    state = {"research": {"automation": True}, "entities": "eJwrSS0u0c1MzQEAF5gERg=="}
    s_tag, s_body, s_id = _blob(state)
    t_tag, t_body, _ = _blob({"task": "iron", "total_reward": 3})
    st_tag, st_body, st_digest = _blob({"action": "mine()", "reward": 1.5})
    o_tag, o_body, o_digest = _blob({"code": "mine()"})
    m_tag, m_body, _ = _blob({"model": "m1"})
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO trajectories (id, task, total_reward, codec, body, created_at, updated_at)"
                " VALUES ('old', 'iron', 3.0, :c, :b, 1, 1)"
            ),
            {"c": t_tag, "b": t_body},
        )
        conn.execute(
            text("INSERT INTO game_states (id, codec, body, raw_size, created_at) VALUES (:i, :c, :b, 10, 1)"),
            {"i": s_id, "c": s_tag, "b": s_body},
        )
        for n in range(3):
            conn.execute(
                text(
                    "INSERT INTO steps (trajectory_id, step_number, reward, game_state_id, digest, codec, body,"
                    " created_at) VALUES ('old', :n, 1.5, :s, :d, :c, :b, 1)"
                ),
                {"n": n, "s": s_id, "d": st_digest, "c": st_tag, "b": st_body},
            )
        conn.execute(
            text(
                "INSERT INTO agent_outputs (trajectory_id, step_number, digest, codec, body, created_at)"
                " VALUES ('old', 0, :d, :c, :b, 1)"
            ),
            {"d": o_digest, "c": o_tag, "b": o_body},
        )
        key = conn.dialect.identifier_preparer.quote("key")  # a reserved word on MySQL
        conn.execute(
            text(
                f"INSERT INTO trajectory_metadata (trajectory_id, {key}, codec, body, updated_at)"
                " VALUES ('old', 'config', :c, :b, 1)"
            ),
            {"c": m_tag, "b": m_body},
        )
    engine.dispose()

    with DatabaseClient(db_url, auto_migrate=False) as db:
        assert db.get_migration_status()["pending"] == ALL[1:]
    with DatabaseClient(db_url) as db:  # migrates on open
        assert db.get_migration_status()["current_version"] == HEAD
        assert db.load_trajectory("old") == {"id": "old", "task": "iron", "total_reward": 3}
        steps = db.load_steps("old")
        assert [s["step_number"] for s in steps] == [0, 1, 2]
        assert steps[0] == {
            "trajectory_id": "old",
            "step_number": 0,
            "action": "mine()",
            "reward": 1.5,
            "game_state_id": s_id,
        }
        assert db.load_game_state(s_id) == state
        assert db.load_agent_outputs("old") == [{"trajectory_id": "old", "step_number": 0, "code": "mine()"}]
        assert db.load_metadata("old") == {"config": {"model": "m1"}}
        db.save_step({"trajectory_id": "old", "step_number": 3, "action": "new"})
        assert db.load_latest_checkpoint("old")["step"]["step_number"] == 3  # type: ignore[index]


def test_migrated_schema_equals_the_declared_schema(db: DatabaseClient, db_url: str) -> None:
    engine = _engine(db_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata)
    engine.dispose()
    assert diffs == []


def _migrate_in_process(url: str, barrier: mp.synchronize.Barrier, queue: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        db = DatabaseClient(url, auto_migrate=False)
        barrier.wait(timeout=60)
        queue.put(db.migrate())
        db.close()
    except BaseException as exc:  # report, never hang the parent
        queue.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("round_", range(3))
def test_parallel_starts_apply_each_migration_exactly_once(backend: str, make_url, round_: int) -> None:  # type: ignore[no-untyped-def]
    """Six processes open one new database at once (three fresh databases per backend: the
    SQLite switch to WAL once failed in about one round of six)."""
    db_url = make_url(backend)
    ctx = mp.get_context("spawn")
    n = 6
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_migrate_in_process, args=(db_url, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r for r in results if isinstance(r, str)]
    assert errors == []
    applied = sorted((r for r in results if r), key=len)
    assert applied == [ALL], results
    with DatabaseClient(db_url) as db:
        assert db.get_migration_status()["up_to_date"]


def test_a_database_from_a_newer_fle_db_is_refused(db: DatabaseClient, db_url: str) -> None:
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE fle_db_version SET version_num = '9999_future'"))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="newer fle-db"):
        DatabaseClient(db_url)


def test_another_applications_tables_are_refused_and_left_untouched(db_url: str) -> None:
    engine = _engine(db_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE steps (id INTEGER PRIMARY KEY, note VARCHAR(20))"))
        conn.execute(text("INSERT INTO steps (id, note) VALUES (1, 'theirs')"))
    with pytest.raises(SchemaVersionError, match="not created by fle-db"):
        DatabaseClient(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT note FROM steps")).scalar() == "theirs"
    engine.dispose()


def test_downgrading_commit_tokens_renumbers_commits_in_instant_order_and_upgrading_keeps_them(
    backend: str, make_url
) -> None:  # type: ignore[no-untyped-def]
    from alembic import command

    url = make_url(backend)
    with DatabaseClient(url, backup_interval=0) as db:
        for n in range(5):
            db.save_step({"trajectory_id": "t", "step_number": n}, game_state={"tick": n})
            db.save_metadata("t", "k", n)
        middle = db.recovery_window()["to"]
        db.delete_trajectory("t")
    engine = _engine(url)
    with engine.begin() as conn:
        command.downgrade(fle_migrations._config(conn), "0007_read_only_login")
    with engine.connect() as conn:
        log = conn.execute(text("SELECT seq, committed_at FROM commit_log ORDER BY committed_at, seq")).all()
        assert [row[0] for row in log] == list(range(1, len(log) + 1))
        assert conn.execute(text("SELECT seq FROM log_head")).scalar() == len(log)
        for table in ("steps", "trajectory_metadata_history", "steps_history"):
            stamped = conn.execute(text(f"SELECT max(valid_from_seq) FROM {table}")).scalar()
            assert stamped is None or 0 <= stamped <= len(log)
    engine.dispose()
    with DatabaseClient(url, backup_interval=0) as db:  # migrates to head again
        db.restore_to(middle)
        assert [s["step_number"] for s in db.load_steps("t")] == list(range(5))
        assert db.load_metadata("t") == {"k": 4}
