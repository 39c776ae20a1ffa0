"""The schema serves its access paths through indexes: resume is one index probe, not a scan."""

from __future__ import annotations

from sqlalchemy import inspect, text

from fle_db import DatabaseClient
from fle_db.schema import metadata


def _plan(db: DatabaseClient, trajectory_id: str) -> str:
    """The query plan of the resume query, exactly as the backend sends it."""
    backend = db._backend  # type: ignore[attr-defined]
    query = backend._select_latest
    params = query.params({"tid": trajectory_id})
    with backend.engine.connect() as conn:
        if backend.name == "sqlite":
            return "\n".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + query.sql, params))
        conn.execute(text("ANALYZE"))
        return "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + query.sql, params))


def test_resume_reads_the_newest_step_through_the_primary_key(db: DatabaseClient) -> None:
    for t in range(20):
        db.batch_save_steps({"trajectory_id": f"t{t}", "step_number": n, "action": "a"} for n in range(150))
    plan = _plan(db, "t7")
    if db._backend.name == "sqlite":  # type: ignore[attr-defined]
        # The primary key's index (SQLite names it sqlite_autoindex_steps_1), searched, not scanned.
        search = [line for line in plan.splitlines() if "steps USING" in line]
        assert search and search[0].lstrip().startswith("SEARCH steps USING") and "(trajectory_id=?)" in search[0], plan
        assert "SCAN steps" not in plan, plan
        assert "TEMP B-TREE" not in plan, plan
    else:
        assert "Index Scan Backward using pk_steps on steps" in plan, plan
        assert "Seq Scan on steps" not in plan and "Sort" not in plan, plan
    assert db.load_latest_checkpoint("t7")["step"]["step_number"] == 149  # type: ignore[index]


def test_every_declared_index_exists_in_the_database(db: DatabaseClient) -> None:
    engine = db._backend.engine  # type: ignore[attr-defined]
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {ix["name"] for ix in inspector.get_indexes(table.name)}
        assert {ix.name for ix in table.indexes} <= present, table.name
