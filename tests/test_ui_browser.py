"""``fle-db ui`` as a person uses it: a real server on a database filled by ``fle-db demo``,
driven in headless Chromium (Debian's ``chromium`` through Playwright's ``executable_path``;
``.ci/run`` installs it). Each page is opened by clicking through, checked for what it shows,
and screenshotted into the test's tmp dir. Without Chromium the test skips, except under
``CI=true``, where it fails."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from fle_db import DatabaseClient

XSS = "<script>alert(1)</script>"
FLE_DB = [sys.executable, "-c", "from fle_db.cli import main; main()"]


def _chromium() -> str:
    path = os.environ.get("FLE_DB_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium on PATH (apt-get install chromium, or set FLE_DB_TEST_CHROMIUM)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(f"SKIPPING BROWSER TEST: {reason}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``(base URL, database URL)`` of ``fle-db ui`` over a demo database with a search tree and
    a step whose action is a script tag."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    subprocess.run([*FLE_DB, "--url", url, "demo", "--trajectories", "3", "--steps", "12"], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    with DatabaseClient(url) as db:
        db.save_step({"trajectory_id": "hostile", "step_number": 0, "action": XSS, "reward": 1.0},
                     environment_feedback={"stdout": XSS}, game_state={"note": XSS})  # fmt: skip
        for depth in range(3):
            for branch in range(2):
                db.append_step("search-run", {"action": f"branch {branch}", "reward": branch},
                               node={"tree": "demo-tree", "depth": depth, "value": depth + branch / 2})  # fmt: skip
    port = _free_port()
    process = subprocess.Popen([*FLE_DB, "--url", url, "ui", "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/api/v1", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"fle-db ui did not start: {process.stdout.read() if process.stdout else ''}"
                    ) from None
                time.sleep(0.2)
        yield base, url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_researcher_browses_runs_in_a_real_browser(server: tuple[str, str], tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    base, db_url = server
    shots = tmp_path / "screenshots"
    shots.mkdir()
    dialogs: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

        def shot(name: str) -> None:
            page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        # The list: every trajectory, then filtered by a task, then sorted by reward.
        page.goto(base + "/")
        rows = page.locator("#rows tr")
        assert rows.count() == 5, page.content()
        shot("list")
        with DatabaseClient(db_url, read_only=True) as db:
            demo = [r for r in db.list_trajectories(order_by="id")["trajectories"] if r["id"].startswith("demo-")]
        task = demo[0]["task"]
        page.fill("input[name=task]", task)
        page.click("button[type=submit]")
        page.wait_for_url(re.compile(r"task="))
        assert {text.strip() for text in page.locator("#rows tr td:nth-child(2)").all_inner_texts()} == {task}
        shot("list-filtered")
        page.goto(base + "/")
        page.click("th a[data-order=total_reward]")
        page.wait_for_url(re.compile(r"order=total_reward"))
        rewards = [
            float(t) for t in page.locator("#rows tr td:nth-child(5)").all_inner_texts() if t.strip() != "\u2013"
        ]
        assert rewards == sorted(rewards, reverse=True) and len(rewards) >= 3

        # A trajectory: chart, steps, and a new step appearing without a reload.
        target = demo[0]["id"]
        page.goto(base + "/")
        page.click(f"a[href='/trajectories/{target}']")
        page.wait_for_selector(".chart svg rect")
        assert page.locator("table.steps tbody tr").count() == demo[0]["steps"]
        shot("trajectory")
        with DatabaseClient(db_url) as writer:
            writer.append_step(target, {"action": "# a step written while the page is open", "reward": 5.0})
        page.wait_for_selector(f"table.steps a[href='/trajectories/{target}/steps/{demo[0]['steps']}']",
                               timeout=15_000)  # fmt: skip

        # A step: highlighted code, feedback, a lazily loaded state key, then a diff.
        page.click(f"table.steps a[href='/trajectories/{target}/steps/3']")
        page.wait_for_selector("pre.code .k, pre.code .nb, pre.code .n")
        assert "Environment feedback" in page.inner_text("main") and page.locator("#prev-step").count() == 1
        page.locator("details.state summary").first.click()
        page.wait_for_function("() => !document.querySelector('details.state pre').textContent.includes('loading')")
        assert page.locator("details.state pre").first.inner_text().strip()
        shot("step")
        page.click("#diff-previous")
        page.wait_for_url(re.compile(r"/steps/2/diff\?to=3"))
        assert "changed" in page.inner_text(".summary")
        shot("diff")

        # A search tree: nodes by depth, the best of each highlighted.
        page.goto(base + "/trees/demo-tree")
        assert page.locator("tr.best").count() == 3
        shot("tree")

        # Status, and a hostile step shown as text.
        page.goto(base + "/status")
        assert page.inner_text("#health") in ("ok", "degraded")
        assert "Recovery window" in page.inner_text("main")
        shot("status")
        page.goto(base + "/trajectories/hostile/steps/0")
        assert XSS in page.inner_text("#step-record") and XSS in page.inner_text("#feedback-stdout")
        shot("hostile")
        assert errors == [], errors
        page.goto(base + "/trajectories/no-such-run")
        assert "404" in page.inner_text("h1")
        browser.close()
    assert dialogs == [], "a stored script ran"
    assert {p.name for p in shots.iterdir()} >= {"list.png", "trajectory.png", "step.png", "diff.png", "tree.png"}
