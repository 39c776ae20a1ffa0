"""Backend roles (``CheckpointStore`` required; ``SearchStore``, ``AdminStore``, ``HistoryStore``
optional) and the typed errors of the backend boundary: a missing role is an UnsupportedError
naming it, a reference to a missing row a MissingReferenceError (a NotFoundError) apart from a
content conflict (ConflictError), and version allocation gives up instead of spinning."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from test_registry import _register

from fle_db import ConflictError, DatabaseClient, MissingReferenceError, NotFoundError, Settings, UnsupportedError
from fle_db.backends import (
    AdminStore,
    Backend,
    CheckpointStore,
    HistoryStore,
    SearchStore,
    as_history,
    as_search,
    open_backend,
    roles,
)
from fle_db.backends.base import Checkpoint, StepRow
from fle_db.backends.sqlite import SQLiteBackend
from fle_db.storage.engine import EncodedRecord
from fle_db.testing import require_role


def _delegate(name: str) -> Callable[..., Any]:
    def method(self: CheckpointsOnly, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, name)(*args, **kwargs)

    method.__name__ = name
    return method


class CheckpointsOnly(CheckpointStore):
    """A third-party backend implementing only the required role (each method SQLite's)."""

    name = "checkpointsonly"
    url_from_options = SQLiteBackend.__dict__["url_from_options"]
    normalize_url = SQLiteBackend.__dict__["normalize_url"]
    location = SQLiteBackend.__dict__["location"]
    database_exists = SQLiteBackend.__dict__["database_exists"]

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.inner = SQLiteBackend(settings)


for _name in CheckpointStore.__abstractmethods__ - {"url_from_options"}:
    setattr(CheckpointsOnly, _name, _delegate(_name))
CheckpointsOnly.__abstractmethods__ = frozenset()


@pytest.fixture
def checkpoints_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DatabaseClient]:
    _register(tmp_path, monkeypatch, {"checkpointsonly": f"{__name__}:CheckpointsOnly"})
    with DatabaseClient(f"checkpointsonly:///{tmp_path / 'c.db'}") as db:
        yield db


def test_the_builtin_backends_implement_every_role() -> None:
    assert roles(SQLiteBackend) == {"SearchStore": True, "AdminStore": True, "HistoryStore": True, "TailStore": True}
    assert issubclass(SQLiteBackend, Backend)
    for role in (CheckpointStore, SearchStore, AdminStore, HistoryStore):
        assert issubclass(Backend, role)


def test_a_backend_with_only_the_checkpoint_role_stores_checkpoints(checkpoints_only: DatabaseClient) -> None:
    db = checkpoints_only
    assert roles(db._backend) == {"SearchStore": False, "AdminStore": False, "HistoryStore": False, "TailStore": False}  # type: ignore[attr-defined]
    db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"}, game_state={"tick": 0})
    db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"}, game_state={"tick": 1})
    assert db.load_latest_checkpoint("t")["game_state"] == {"tick": 1}  # type: ignore[index]
    assert [(s["trajectory_id"], s["step_number"]) for s in db.get_lineage("t", 1)] == [("t", 0), ("t", 1)]
    assert db.cleanup(trajectory_ids=["t"])["trajectories"] == ["t"]


@pytest.mark.parametrize(
    ("call", "role"),
    [
        (lambda db: db.get_search_nodes("tree"), "SearchStore"),
        (lambda db: db.append_step("t", {"a": 1}, node={"tree": "x", "depth": 0}), "SearchStore"),
        (lambda db: db.save_step({"trajectory_id": "t", "step_number": 0}, node={"tree": "x"}), "SearchStore"),
        (lambda db: db.get_statistics(), "AdminStore"),
        (lambda db: db.health_check(), "AdminStore"),
        (lambda db: db.validate(), "AdminStore"),
        (lambda db: db.recovery_window(), "HistoryStore"),
        (lambda db: db.create_backup(), "HistoryStore"),
    ],
)
def test_a_call_needing_a_missing_role_raises_unsupported_naming_it(
    checkpoints_only: DatabaseClient, call: Callable[[DatabaseClient], Any], role: str
) -> None:
    with pytest.raises(UnsupportedError, match=rf"'checkpointsonly' backend does not implement the {role} role") as err:
        call(checkpoints_only)
    assert err.value.role == role


def test_the_conformance_kit_skips_a_role_the_backend_lacks(checkpoints_only: DatabaseClient) -> None:
    with pytest.raises(pytest.skip.Exception, match="does not implement the SearchStore role"):
        require_role(checkpoints_only, "SearchStore")
    require_role(DatabaseClient("sqlite://"), "SearchStore")  # a backend with the role: no skip


def _delta_of_missing_step(trajectory_id: str) -> Checkpoint:
    body = EncodedRecord("json", b'{"action": "x"}', "d" * 32, base=7)
    return Checkpoint(trajectory_id, 8, step=StepRow(body))


def test_a_write_naming_a_missing_row_is_a_missing_reference_not_a_conflict(db_url: str) -> None:
    with DatabaseClient(db_url) as db:
        db.save_step({"trajectory_id": "t", "step_number": 0, "action": "a"})
        backend = db._backend  # type: ignore[attr-defined]
        with pytest.raises(MissingReferenceError) as err:
            backend.save_checkpoints([_delta_of_missing_step("t")])
        assert isinstance(err.value, NotFoundError) and not isinstance(err.value, ConflictError)
        assert err.value.reference
        assert [s["step_number"] for s in db.load_steps("t")] == [0]  # nothing of the write stored
        with pytest.raises(MissingReferenceError, match="forked from step 3 of 'nope'") as fork:
            db.save_trajectory({"id": "f", "parent_trajectory_id": "nope", "parent_step_number": 3})
        assert fork.value.reference == "step 3 of trajectory 'nope'"
        db.save_step({"trajectory_id": "t", "step_number": 1, "action": "b"})
        with pytest.raises(ConflictError) as conflict:
            db.save_step({"trajectory_id": "t", "step_number": 1, "action": "different"})
        assert not isinstance(conflict.value, NotFoundError)


@pytest.mark.timeout(120)
def test_allocate_version_gives_up_on_a_permanent_integrity_error(db_url: str) -> None:
    with DatabaseClient(db_url) as db:
        backend = db._backend  # type: ignore[attr-defined]
        search = as_search(backend)
        assert search.allocate_version("first", None) == 1
        with backend.engine.begin() as conn:  # every later insert now violates a constraint
            if db.settings.backend == "sqlite":
                conn.execute(
                    text(
                        "CREATE TRIGGER refuse BEFORE INSERT ON fle_versions BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    )
                )
            else:
                conn.execute(text("ALTER TABLE fle_versions ADD CONSTRAINT refuse CHECK (version < 2)"))
        with pytest.raises(ConflictError, match="could not allocate an FLE version"):
            search.allocate_version("second", None)
        assert search.load_version(None) == (1, "first", None)


def test_open_backend_returns_the_roles_of_a_builtin_backend(db_url: str) -> None:
    backend = open_backend(Settings.resolve(db_url))
    try:
        backend.migrate()
        horizon, latest = as_history(backend).recovery_window()
        assert horizon.seq <= latest.seq
    finally:
        backend.close()


def test_backends_never_import_config_so_config_and_the_registry_form_no_cycle() -> None:
    # config imports the registry, which imports every backend module: a backend importing
    # config (outside TYPE_CHECKING) would close the cycle config -> registry -> backend -> config.
    package = Path(__file__).resolve().parents[1] / "fle_db" / "backends"
    offenders = []
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        typing_only = {
            id(node)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
            for node in ast.walk(block)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and id(node) not in typing_only:
                if (node.module or "").split(".")[-1] == "config" or node.module == "fle_db.config":
                    offenders.append(f"{path.relative_to(package)}:{node.lineno}")
    assert offenders == []
