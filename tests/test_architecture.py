"""The package's shape: no import cycles, importable everywhere, every public method timed."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import fle_db
from fle_db import DatabaseClient
from fle_db.config import Options, Settings

PACKAGE = Path(fle_db.__file__).parent

#: Public client methods that are not timed, and why.
UNTIMED = {
    "close": "releases connections; a metric of it would outlive the client",
    "backup_scheduler": "builds an object; its backups are timed as create_backup's work",
    "get_performance_metrics": "reads the metrics themselves, touches no database",
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if "versions" in parts or parts[-1] == "env":  # Alembic scripts, run by Alembic, never imported
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fle_db modules ``module`` imports anywhere (functions included), TYPE_CHECKING aside."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                targets.add(submodule if submodule in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {t for t in targets if t in modules and t != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def test_fle_db_modules_import_each_other_without_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["fle_db.client"], "the import graph was not built (no imports found)"
    assert _cycles(graph) == []


def test_the_cycle_finder_sees_function_level_imports() -> None:
    code = textwrap.dedent(
        """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .b import B
        def f():
            from .c import C
        """
    )
    path = PACKAGE / "__probe__.py"
    modules = {"fle_db.a": path, "fle_db.b": path, "fle_db.c": path}
    try:
        path.write_text(code)
        assert _imports("fle_db.a", path, modules) == {"fle_db.c"}
    finally:
        path.unlink()
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_fle_db_loads_no_database_driver_and_no_alembic() -> None:
    done = _run(
        """
        import sys
        import fle_db
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("psycopg", "psycopg2", "pymysql", "MySQLdb",
                                                                      "apsw", "alembic", "filelock", "pyarrow"))
        print(loaded)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_no_fle_db_module_imports_fcntl() -> None:
    modules = _modules()
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                assert "fcntl" not in {a.name for a in node.names}, name
            elif isinstance(node, ast.ImportFrom):
                assert node.module != "fcntl", name


def test_open_save_load_and_backup_work_where_fcntl_does_not_exist(tmp_path: Path) -> None:
    """What a Windows laptop sees: no fcntl module at all (the backup lock falls back to filelock's
    portable lock; the standard library's own optional uses of fcntl cope with its absence)."""
    done = _run(
        f"""
        import sys, warnings
        sys.modules["fcntl"] = None  # `import fcntl` now raises ImportError
        warnings.simplefilter("ignore")  # filelock says it falls back to a soft lock
        import fle_db
        with fle_db.DatabaseClient("sqlite:///{tmp_path / "w.db"}", backup_dir="{tmp_path / "backups"}") as db:
            db.save_step({{"trajectory_id": "t", "step_number": 0, "action": "a"}}, game_state={{"tick": 1}})
            assert db.load_step("t", 0)["action"] == "a"
            assert db.load_latest_checkpoint("t")["game_state"] == {{"tick": 1}}
            backup_id = db.create_backup()
            assert db.verify_backup(backup_id)["ok"]
        print("ok", "fcntl" in sys.modules and sys.modules["fcntl"] is not None)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "False"]


def test_every_public_client_method_is_counted_in_the_performance_metrics() -> None:
    untimed = []
    for name, member in inspect.getmembers(DatabaseClient):
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        if not getattr(member, "is_timed", False) and name not in UNTIMED:
            untimed.append(name)
    assert untimed == []
    assert set(UNTIMED) <= {n for n, m in inspect.getmembers(DatabaseClient) if inspect.isfunction(m)}


def test_client_options_are_exactly_the_settings_arguments() -> None:
    """``DatabaseClient(**options)`` is typed by ``Options``; ``Settings.resolve`` has the defaults."""
    parameters = inspect.signature(Settings.resolve).parameters
    resolved = {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(typing.get_type_hints(Options)) == resolved


def test_the_version_is_defined_once() -> None:
    from importlib.metadata import version

    assert fle_db.__version__ == version("fle-db")
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
