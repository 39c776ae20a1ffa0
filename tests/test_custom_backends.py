"""The worked example (``examples/fle-db-example-backend``): an out-of-tree backend package,
installed with pip, found through its entry point, selected by ``FLE_DB_TYPE=example`` and
passing the conformance suite in its own test run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fle-db-example-backend"


def test_example_backend_package_installs_and_passes_the_conformance_suite(tmp_path: Path) -> None:
    target = tmp_path / "site"
    # Installed into a directory of its own (the current environment is left as it was); fle-db
    # itself comes from this environment, hence --no-deps; --no-build-isolation keeps it offline.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE)],
        check=True,
        timeout=300,
    )  # fmt: skip
    assert (target / "fle_db_example").is_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    env.pop("FLE_DB_TYPE", None)
    selected = subprocess.run(
        [sys.executable, "-c", "from fle_db.cli import main; main()", "--json", "config"],
        env={**env, "FLE_DB_TYPE": "example", "EXAMPLE_DB_FILE": str(tmp_path / "x.db")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert selected.returncode == 0, selected.stderr
    assert '"backend": "example"' in selected.stdout
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed is not None and int(passed.group(1)) >= 30, run.stdout[-2000:]
