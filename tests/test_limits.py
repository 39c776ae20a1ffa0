"""Schema limits are validated up front, identically on every backend: a value SQLite would
store but PostgreSQL or MySQL would refuse is a ValidationError everywhere, naming the field and
the limit, with nothing written."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import ALL_BACKENDS
from sqlalchemy import Integer, String

from fle_db import ConfigurationError, DatabaseClient, NotFoundError, Settings, ValidationError, models, schema


@pytest.fixture(params=ALL_BACKENDS)
def db(request: pytest.FixtureRequest, make_url: Callable[[str], str]) -> Iterator[DatabaseClient]:
    with DatabaseClient(make_url(str(request.param))) as client:
        yield client


@pytest.mark.parametrize("field", ["task", "agent_type"])
def test_text_over_the_column_limit_is_refused_on_every_backend(db: DatabaseClient, field: str) -> None:
    with pytest.raises(ValidationError, match=rf"{field}.*200"):
        db.save_trajectory({"id": "t", field: "x" * 201})
    with pytest.raises(ValidationError, match=field):
        db.save_trajectory({"id": "t", field: "a\x00b"})
    with pytest.raises(NotFoundError):
        db.load_trajectory("t")
    widest = "é🚀" * 100  # 200 characters, 600 bytes in UTF-8: the limit counts characters
    db.save_trajectory({"id": "t", field: widest})
    assert db.load_trajectory("t")[field] == widest


def test_every_bounded_text_column_has_the_limit_the_models_check() -> None:
    """Introspective: a bounded column added later must match a limit the client checks."""
    lengths = {
        f"{table.name}.{column.name}": column.type.length
        for table in schema.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, String) and column.type.length is not None
    }
    checked = {schema.ID_LENGTH, schema.DIGEST_LENGTH, schema.CODEC_LENGTH}
    assert set(lengths.values()) <= checked, lengths
    assert schema.ID_LENGTH == models.TEXT_LENGTH
    assert f"{{1,{schema.ID_LENGTH}}}" in models.ID_PATTERN


def test_max_payload_bytes_cannot_exceed_what_the_raw_size_column_holds() -> None:
    (raw_size,) = {table.c.raw_size.type.__class__ for table in (schema.blobs, schema.game_states)}
    assert raw_size is Integer  # 32-bit on PostgreSQL and MySQL
    with pytest.raises(ConfigurationError, match="max_payload_bytes"):
        Settings.resolve("sqlite://", max_payload_bytes=2**31)
    assert Settings.resolve("sqlite://", max_payload_bytes=2**31 - 1).max_payload_bytes == 2**31 - 1


def test_filters_of_70000_trajectory_ids_work_on_every_backend(db: DatabaseClient, tmp_path: Path) -> None:
    # More ids than any engine takes as separate parameters (SQLite 32,766, PostgreSQL 65,535).
    for i in range(3):
        db.save_trajectory({"id": f"t{i}", "task": "x"})
    ids = [f"t{i}" for i in range(70_000)]
    assert db.export_data(str(tmp_path / "out.jsonl"), trajectory_ids=ids)["trajectories"] == 3
    report = db.cleanup(trajectory_ids=ids, dry_run=True)
    assert report["trajectories"] == ["t0", "t1", "t2"]
    assert isinstance(report["bytes_freed"], int)
