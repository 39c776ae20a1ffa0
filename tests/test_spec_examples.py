"""Every Python example of the spec runs as written, with only the import line changed.

The spec is vendored as ``docs/spec/database.rst`` (so a clone can run this alone); when the
project's shared copy sits beside the repository, the two must be identical.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from fle_db import migrations

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "docs" / "spec" / "database.rst"
SHARED_SPEC = ROOT.parent / "shared" / "spec" / "database.rst"
SPEC_IMPORT = "from fle.commons.db_client import DatabaseClient"
OUR_IMPORT = "from fle_db import DatabaseClient"


def spec_examples() -> list[tuple[str, str]]:
    """``(section title, code)`` for each ``.. code-block:: python`` of the spec, in order."""
    lines = SPEC.read_text().splitlines()
    examples, title = [], ""
    for i, line in enumerate(lines):
        if i + 1 < len(lines) and re.fullmatch(r"[-~=]{3,}", lines[i + 1].strip()) and line.strip():
            title = line.strip()
        elif line.lstrip().startswith("**") and line.strip().endswith("**"):
            title = line.strip("* ")
        if line.strip() == ".. code-block:: python":
            indent = len(line) - len(line.lstrip())
            body = []
            for following in lines[i + 1 :]:
                if following.strip() and len(following) - len(following.lstrip()) <= indent:
                    break
                body.append(following)
            code = "\n".join(body)
            margin = min(len(b) - len(b.lstrip()) for b in body if b.strip())
            examples.append((title, "\n".join(b[margin:] for b in body).strip() + "\n"))
            assert code
    return examples


def test_vendored_spec_is_the_projects_spec() -> None:
    if not SHARED_SPEC.exists():
        pytest.skip(f"no shared spec beside the repository ({SHARED_SPEC})")
    assert SPEC.read_text() == SHARED_SPEC.read_text()


def test_the_spec_has_the_examples_this_suite_runs() -> None:
    titles = [title for title, _ in spec_examples()]
    for expected in (
        "Saving a Trajectory",
        "Loading a Trajectory",
        "Saving Steps",
        "Loading Steps",
        "Example Migration",
        "Example Optimization",
    ):
        assert expected in titles


def _environment(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the spec's ``DatabaseClient()`` (no arguments) at the test database via its env vars."""
    parsed = make_url(url)
    for var in (
        "FLE_DB_TYPE",
        "SQLITE_DB_FILE",
        "SKILLS_DB_HOST",
        "SKILLS_DB_PORT",
        "SKILLS_DB_NAME",
        "SKILLS_DB_USER",
        "SKILLS_DB_PASSWORD",
    ):
        monkeypatch.delenv(var, raising=False)
    if parsed.get_backend_name() == "sqlite":
        monkeypatch.setenv("FLE_DB_TYPE", "sqlite")
        monkeypatch.setenv("SQLITE_DB_FILE", str(parsed.database))
    else:
        monkeypatch.setenv("FLE_DB_TYPE", "postgres")
        monkeypatch.setenv("SKILLS_DB_HOST", str(parsed.host))
        monkeypatch.setenv("SKILLS_DB_PORT", str(parsed.port or 5432))
        monkeypatch.setenv("SKILLS_DB_NAME", str(parsed.database))
        monkeypatch.setenv("SKILLS_DB_USER", str(parsed.username))


def test_spec_examples_run_in_order_on_the_configured_backend(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _environment(db_url, monkeypatch)
    monkeypatch.setenv("FLE_DB_BACKUP_DIR", str(tmp_path / "backups"))
    namespace: dict[str, object] = {}
    ran = []
    for title, code in spec_examples():
        assert "fle.commons" not in code.replace(SPEC_IMPORT, OUR_IMPORT)
        exec(compile(code.replace(SPEC_IMPORT, OUR_IMPORT), f"<spec: {title}>", "exec"), namespace)
        ran.append(title)
    out = capsys.readouterr().out
    assert "Trajectory: trajectory_001" in out
    assert "Agent: MyAgent" in out and "Reward: 150.0" in out
    assert 'Step 1: print("Hello Factorio!")' in out
    head = migrations.latest_revision()
    assert f"Current version: {head}" in out and f"Latest version: {head}" in out
    db = namespace["db"]
    assert [s["action"] for s in db.load_steps("t1")] == ["action1", "action2", "action3"]  # type: ignore[attr-defined]
    assert db.settings.max_connections == 10 and db.settings.connection_timeout == 30  # type: ignore[attr-defined]
    assert "Total trajectories: 2" in out and "Total steps: 4" in out and "Connection count: " in out
    assert "Backup created: " in out and len(list((tmp_path / "backups").glob("*.json"))) == 2  # + safety backup
    assert len(ran) == len(spec_examples())
