"""The README works as written: every command line and code block in it runs (or, for the few that
cannot run inside the suite, is checked another way, said here), its install lines work from a
clone, and it names no file outside the repository."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from conftest import ALL_BACKENDS
from psycopg import sql

from fle_db import DatabaseClient
from fle_db.cli import main
from fle_db.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
QUICK_START_URL = "sqlite:///runs.db"


def blocks(language: str) -> list[str]:
    """The fenced code blocks of the README in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)


def commands() -> list[str]:
    """Every command line of the README's bash blocks (comments stripped)."""
    lines = (line.split("  #")[0].strip() for block in blocks("bash") for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def python_block(marker: str) -> str:
    (block,) = [b for b in blocks("python") if marker in b]
    return block


def _extras(spec: str) -> list[str]:
    """``['test']`` from ``.[test]`` or ``'.[test,fle]'``."""
    found = re.fullmatch(r"'?\.(?:\[([a-z,]+)\])?'?", spec)
    assert found, f"not an install from the clone: {spec}"
    return found.group(1).split(",") if found.group(1) else []


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What a clone holds: the repository's tracked files (as they are in the work tree)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: cannot tell which files a clone would hold")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    target = tmp_path_factory.mktemp("clone") / "fle-db"
    for name in filter(None, listed.decode().split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


# -- install lines ------------------------------------------------------------------------------
def test_quick_start_is_clone_venv_then_two_commands_install_and_demo_then_test_suite() -> None:
    (quick,) = [b for b in blocks("bash") if "fle-db demo" in b]
    lines = [line.strip() for line in quick.splitlines() if line.strip()]
    assert lines[0].startswith("git clone ") and lines[1].startswith("python3 -m venv .venv")
    assert lines[2:] == ["pip install -e . && fle-db demo", "pip install -e '.[test]' && python -m pytest"]
    assert "15 minutes" in README and "need root" in README  # the suite's duration and needs, said once


def test_every_extra_the_readme_installs_exists_and_pytest_comes_with_test() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    installs = [line for line in commands() if line.startswith("pip install")]
    installs += re.findall(r"`pip install (-e '[^`]+')`", README)
    assert installs
    for line in installs:
        spec = line.split("&&")[0].split("-e", 1)[1].strip()
        for extra in _extras(spec):
            assert extra in extras, f"README installs the unknown extra [{extra}]: {line}"
    assert any(req.startswith("pytest") for req in extras["test"])
    assert "pip install 'fle-db" not in README  # not published: installs are from the clone


def test_the_clone_builds_with_its_runtime_dependencies_and_the_fle_db_command(clone: Path, tmp_path: Path) -> None:
    """``pip install -e .`` from the clone: the project builds offline (no index, no isolation) and
    declares the ``fle-db`` command."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(tmp_path), str(clone)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("fle_db-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "fle-db = fle_db.cli:main" in entry_points
    assert "fle_db/cli/__init__.py" in names and "fle_db/migrations/env.py" in names


def test_the_demo_needs_only_the_runtime_dependencies(tmp_path: Path) -> None:
    """``pip install -e .`` must suffice for ``fle-db demo`` (and ``list``, ``show``): run them in
    a process where every module of the optional extras fails to import."""
    from importlib.metadata import packages_distributions

    runtime = {re.split(r"[\[<>=!~ ;]", req)[0].lower() for req in PYPROJECT["project"]["dependencies"]}
    optional = {
        re.split(r"[\[<>=!~ ;]", req)[0].lower()
        for reqs in PYPROJECT["project"]["optional-dependencies"].values()
        for req in reqs
    } - runtime
    blocked = sorted(
        module
        for module, dists in packages_distributions().items()
        if {d.lower() for d in dists} & optional and module.isidentifier()
    )
    assert "pytest" in blocked and "pyarrow" in blocked
    script = (
        "import sys\n"
        f"BLOCKED = set({blocked!r})\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not a runtime dependency')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from fle_db.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {**os.environ, "SQLITE_DB_FILE": str(tmp_path / "demo.db")}
    env.pop("FLE_DB_TYPE", None)
    for args in (["demo", "--trajectories", "2", "--steps", "3"], ["list"]):
        done = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr


# -- every command ------------------------------------------------------------------------------
#: README command lines that do not run inside the suite, and how each is checked instead.
NOT_RUN = {
    "python -m pytest": "it is this suite",
    "ruff check . && ruff format --check . && mypy": "CI runs it (.ci/run); the tools come with [test]",
    "CI=true bash .ci/run": "the CI script itself (needs root to start servers)",
}


def test_every_command_line_of_the_readme_runs(clone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each line is run as written (``fle-db`` through click, in a fresh directory with the default
    database), or checked as ``NOT_RUN`` says; a new kind of line fails until it is handled here."""
    monkeypatch.chdir(tmp_path)
    for var in ("FLE_DB_TYPE", "SQLITE_DB_FILE", "FLE_DB_BACKUP_DIR"):
        monkeypatch.delenv(var, raising=False)
    demo_id: str | None = None
    for line in commands():
        parts = [line] if line in NOT_RUN else [part.strip() for part in line.split("&&")]
        for part in parts:
            if part in NOT_RUN:
                if part.startswith("ruff"):
                    assert {"ruff", "mypy"} <= {
                        re.split(r"[<>=]", r)[0] for r in PYPROJECT["project"]["optional-dependencies"]["test"]
                    }
                elif part.startswith("CI=true"):
                    assert (clone / ".ci" / "run").is_file()
                continue
            if part.startswith("git clone "):
                assert (clone / "pyproject.toml").is_file()  # the `clone` fixture: the tracked files
            elif part == "cd fle-db":
                assert clone.name == "fle-db"
            elif part.startswith("python3 -m venv .venv"):
                subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / ".venv")], check=True)
                assert (tmp_path / ".venv" / "bin" / "activate").is_file()
            elif part == ". .venv/bin/activate":
                assert (tmp_path / ".venv" / "bin" / "activate").is_file()
            elif part.startswith("pip install -e "):
                _extras(part.removeprefix("pip install -e ").split()[0])  # checked in depth above
            elif part.startswith("fle-db "):
                args = part.split()[1:]
                if "<id>" in args:
                    assert demo_id is not None, "the README shows an id before the demo made one"
                    args = [demo_id if arg == "<id>" else arg for arg in args]
                result = CliRunner().invoke(main, args, catch_exceptions=False)
                assert result.exit_code == 0, f"{part}: {result.output}"
                if args[0] == "demo":
                    demo_id = next(word for word in result.stdout.split() if word.startswith("demo-"))
                    demo_id = demo_id.rsplit("-", 1)[0] + "-2"  # the run the demo interrupted
            else:
                pytest.fail(f"README command not handled by this test: {part!r}")
    assert demo_id is not None


def test_every_cli_command_of_the_table_answers_help() -> None:
    for synopsis in re.findall(r"^\| `fle-db ([a-z-]+)", README, flags=re.MULTILINE):
        result = CliRunner().invoke(main, [synopsis, "--help"])
        assert result.exit_code == 0, synopsis


# -- every code block ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", ALL_BACKENDS)
def test_the_python_quick_start_runs_verbatim_and_prints_what_it_says(
    backend_name: str, make_url: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = python_block("load_latest_checkpoint")
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    assert QUICK_START_URL in code
    monkeypatch.chdir(tmp_path)
    url = QUICK_START_URL if backend_name == "sqlite" else make_url(backend_name)
    out = io.StringIO()
    with redirect_stdout(out):
        exec(compile(code.replace(QUICK_START_URL, url), "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    commented = [line.split("# ", 1)[1] for line in code.splitlines() if "print(" in line and "# " in line]
    assert printed[0] == commented[0] and printed[1] == commented[1] and printed[3] == commented[2]
    assert printed[2] == "[('run-1', 0), ('run-1', 1), ('run-1-b', 2)]"
    assert f"`{printed[2]}`" in README  # the lineage the text below the block quotes
    with DatabaseClient(url) as db:
        assert db.load_trajectory("run-1")["success"] is True
        assert [s["step_number"] for s in db.load_steps("run-1")] == [0, 1, 2]


def test_the_other_python_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    others = [b for b in blocks("python") if "load_latest_checkpoint" not in b]
    assert len(others) >= 2
    monkeypatch.chdir(tmp_path)
    for block in others:
        exec(compile(block, "README.md", "exec"), {})


def test_the_sql_block_grants_an_agent_role_what_it_needs(make_url: Any) -> None:
    """The PostgreSQL roles block, run with a unique role, this test's database and a password."""
    (block,) = blocks("sql")
    url = make_url("postgres")
    DatabaseClient(url).close()  # the owner migrates
    role, database = f"fle_agents_{uuid.uuid4().hex[:8]}", Settings.resolve(url).url.database
    statement = block.replace("fle_agents", role).replace("fle_database", str(database)).replace("'...'", "'pw'")
    with psycopg.connect(url, autocommit=True) as conn:
        for part in filter(str.strip, statement.split(";")):
            conn.execute(part.encode())
    try:
        agent_url = url.replace("postgresql://postgres@", f"postgresql://{role}:pw@")
        with DatabaseClient(agent_url) as db:
            db.save_step({"trajectory_id": "t", "step_number": 0}, game_state={"tick": 1})
            assert db.load_latest_checkpoint("t") is not None
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# -- nothing outside the repository -------------------------------------------------------------
def _paths() -> Iterator[str]:
    yield from re.findall(r"\]\(([^)#:]+)\)", README)  # relative markdown links
    yield from re.findall(r"`((?:\.?[\w.-]+/)+[\w.-]*)`", README)  # `dir/file` in code spans


def test_the_readme_names_only_files_in_the_repository_and_not_how_it_was_developed() -> None:
    paths = list(_paths())
    assert "docs/spec/database.rst" in paths and "examples/agent_loop.py" in paths
    for path in paths:  # paths from the repository's root (others are relative to a folder named before them)
        if path.split("/")[0] in ("fle_db", "tests", "docs", "examples", "benchmarks", ".ci"):
            assert (ROOT / path).exists(), f"README names a file the repository does not have: {path}"
    for phrase in ("shared/", "this 2-core", "this VM", "session's", "final code", "here)", "this feature"):
        assert phrase not in README, phrase
