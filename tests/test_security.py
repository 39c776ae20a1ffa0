"""Security: no unpickling, owner-only files, TLS settings, a least-privilege PostgreSQL role."""

from __future__ import annotations

import re
import stat
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.exc import ProgrammingError

from fle_db import BackendUnavailableError, DatabaseClient, Settings

PACKAGE = Path(__file__).resolve().parents[1] / "fle_db"
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def test_the_library_never_unpickles_stored_data() -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if re.search(r"pickle\.loads?\(|pickle\.Unpickler|marshal\.loads|\beval\(", path.read_text())
    ]
    assert offenders == []


def test_database_wal_and_shm_files_are_owner_only(make_url) -> None:  # type: ignore[no-untyped-def]
    with DatabaseClient(make_url("sqlite")) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0}, game_state={"a": 1})
        path = Path(str(db.settings.url.database))
        files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
        assert len(files) == 3
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) & 0o077 == 0, file


def test_tls_settings_reach_the_driver_and_fail_clearly() -> None:
    settings = Settings.resolve(
        environ={"FLE_DB_TYPE": "postgres", "SKILLS_DB_HOST": "h", "SKILLS_DB_NAME": "d", "SKILLS_DB_USER": "u",
                 "SKILLS_DB_SSLMODE": "verify-full", "SKILLS_DB_SSLROOTCERT": "/etc/ca.pem"}
    )  # fmt: skip
    assert settings.url.query == {"sslmode": "verify-full", "sslrootcert": "/etc/ca.pem"}
    # The local server has ssl=off: requiring TLS must fail loudly, never fall back to plain text.
    with pytest.raises(BackendUnavailableError, match=r"SSL|ssl"):
        DatabaseClient("postgresql://postgres@127.0.0.1:5432/postgres?sslmode=require", connection_timeout=3)


def test_a_read_write_role_works_once_the_owner_migrated(make_url) -> None:  # type: ignore[no-untyped-def]
    url = make_url("postgres")
    DatabaseClient(url).close()  # the owner (here: postgres) runs the migrations
    role = f"fle_rw_{uuid.uuid4().hex[:8]}"
    database = Settings.resolve(url).url.database
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(role))
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(
                sql.Identifier(role)
            )
        )
    try:
        rw_url = url.replace("postgresql://postgres@", f"postgresql://{role}@")
        with DatabaseClient(rw_url) as db:
            db.save_step({"trajectory_id": "t", "step_number": 0}, game_state={"a": [1] * 3000})
            assert db.load_latest_checkpoint("t")["game_state"] == {"a": [1] * 3000}  # type: ignore[index]
            assert db.health_check()["checks"]["write_probe"]["status"] == "ok"
            assert db.cleanup(trajectory_ids=["t"])["trajectories"] == ["t"]
            with db._backend.engine.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):  # type: ignore[attr-defined]
                conn.exec_driver_sql("CREATE TABLE nope (x int)")  # the role cannot change the schema
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}").format(
                    sql.Literal(role)
                )
            )
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
