"""The example backend runs fle-db's conformance suite against itself, and is selected by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fle_db import DatabaseClient
from fle_db.testing import BackendConformance


class TestExampleBackend(BackendConformance):
    @pytest.fixture
    def new_database_url(self, tmp_path_factory: pytest.TempPathFactory) -> Callable[[], str]:
        return lambda: f"example:///{tmp_path_factory.mktemp('db') / 'example.db'}"


def test_selected_by_fle_db_type(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLE_DB_TYPE", "example")
    monkeypatch.setenv("EXAMPLE_DB_FILE", str(tmp_path / "runs.db"))
    with DatabaseClient() as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "mine()"})
        assert db.settings.backend == "example"
        assert db.health_check()["checks"]["example"]["status"] == "ok"
    assert (tmp_path / "runs.db").is_file()
