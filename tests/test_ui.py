"""The viewer in-process (Starlette's test client): every page and ``/api/v1`` endpoint on SQLite
and PostgreSQL, its errors (404 page, 400, never a traceback), escaping, the Host check, the
access token, and that it holds no secret."""

from __future__ import annotations

import base64
import socket
import zlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from fle_db import DatabaseClient
from fle_db.cli import main
from fle_db.errors import ConfigurationError, ReadOnlyError
from fle_db.ui.app import create_app
from fle_db.ui.diff import decode_packed, diff_states
from fle_db.ui.serve import allowed_hosts, is_loopback

HOST = "127.0.0.1:8765"
XSS = "<script>alert(1)</script>"


def packed(value: Any) -> str:
    """FLE's way of storing entities: base64 of zlib-compressed JSON."""
    return base64.b64encode(zlib.compress(orjson.dumps(value))).decode()


def fill(db: DatabaseClient) -> None:
    db.save_trajectory({"id": "run-a", "task": "iron", "agent_type": "gpt", "start_time": "2026-01-01T00:00:00+00:00"})
    for n in range(3):
        entities = [{"name": "drill", "x": i} for i in range(n + 1)]
        db.save_step(
            {"trajectory_id": "run-a", "step_number": n, "reward": float(n), "action": f"print({n})"},
            agent_output={"code": f"x = {n}\nprint(x)", "tokens": {"prompt": 10 + n}},
            environment_feedback={"stdout": f"{n}\n", "stderr": ""},
            game_state={"entities": packed(entities), "tick": n, "inventory": {"iron": n}},
        )
    db.save_trajectory({"id": "run-a", "end_time": "2026-01-01T01:00:00+00:00", "total_reward": 3.0, "success": True})
    db.fork_trajectory("run-a", 1, "run-a-fork", task="iron")
    db.save_step({"trajectory_id": "run-a-fork", "step_number": 2, "action": XSS, "reward": -1.0},
                 environment_feedback={"stdout": XSS}, game_state={"tick": 99, "inventory": {"iron": 7}})  # fmt: skip
    for depth in range(3):
        db.append_step("tree-run", {"action": f"try {depth}"}, game_state={"tick": depth},
                       node={"tree": "search-1", "depth": depth, "value": depth / 2})  # fmt: skip


@pytest.fixture
def filled_url(db_url: str) -> str:
    with DatabaseClient(db_url) as db:
        fill(db)
    return db_url


@pytest.fixture
def viewer(filled_url: str) -> Iterator[TestClient]:
    with DatabaseClient(filled_url, read_only=True) as client:
        app = create_app(client, hosts=allowed_hosts("127.0.0.1", 8765))
        with TestClient(app, base_url=f"http://{HOST}", raise_server_exceptions=False) as http:
            yield http


def test_every_page_answers_with_what_it_shows(viewer: TestClient) -> None:
    listing = viewer.get("/")
    assert listing.status_code == 200 and "run-a-fork" in listing.text and "tree-run" in listing.text
    page = viewer.get("/trajectories/run-a")
    assert page.status_code == 200
    assert 'href="/trajectories/run-a-fork"' in page.text and "data-rewards" in page.text
    fork = viewer.get("/trajectories/run-a-fork").text
    assert 'href="/trajectories/run-a/steps/1"' in fork  # its fork point
    step = viewer.get("/trajectories/run-a/steps/1")
    assert step.status_code == 200 and "Step 0" in step.text and "Step 2" in step.text and "prompt" in step.text
    assert '<span class="n">x</span>' in step.text  # highlighted code
    assert "/api/v1/trajectories/run-a/steps/1/state/entities" in step.text
    diff = viewer.get("/trajectories/run-a/steps/0/diff?to=2")
    assert diff.status_code == 200 and "entities[+]" in diff.text and "drill" in diff.text
    across = viewer.get("/trajectories/run-a/steps/1/diff?to=2&trajectory=run-a-fork")
    assert across.status_code == 200 and "removed" in across.text
    tree = viewer.get("/trees/search-1")
    assert tree.status_code == 200 and 'class="best"' in tree.text and "tree-run @ 2" in tree.text
    status = viewer.get("/status")
    assert status.status_code == 200 and "Recovery window" in status.text and "skipped: opened read-only" in status.text


def test_list_filters_sorts_and_pages(viewer: TestClient) -> None:
    assert "run-a-fork" not in viewer.get("/?q=tree").text
    assert "tree-run" not in viewer.get("/?task=iron").text
    assert "run-a-fork" not in viewer.get("/?success=yes").text
    assert "run-a" in viewer.get("/?since=2020-01-01&until=2999-01-01").text
    first = viewer.get("/?order=id&dir=asc&limit=1")
    assert "run-a" in first.text and 'id="next-page"' in first.text
    body = viewer.get("/api/v1/trajectories?order=id&dir=asc&limit=2").json()
    assert [r["id"] for r in body["trajectories"]] == ["run-a", "run-a-fork"]
    rest = viewer.get("/api/v1/trajectories", params={"order": "id", "dir": "asc", "cursor": body["next_cursor"]})
    assert [r["id"] for r in rest.json()["trajectories"]] == ["tree-run"] and rest.json()["next_cursor"] is None
    fragment = viewer.get("/?fragment=1")
    assert fragment.text.lstrip().startswith("<tr>") and "<html" not in fragment.text


def test_api_gives_the_same_data_as_json(viewer: TestClient) -> None:
    assert "/api/v1/trajectories" in viewer.get("/api/v1").json()["endpoints"]
    trajectory = viewer.get("/api/v1/trajectories/run-a").json()
    assert trajectory["step_count"] == 3 and trajectory["rewards"][-1] == [2, 2.0, 3.0]
    assert [f["id"] for f in trajectory["forks"]] == ["run-a-fork"]
    step = viewer.get("/api/v1/trajectories/run-a/steps/2?state=1").json()
    assert step["agent_output"]["code"] == "x = 2\nprint(x)" and step["environment_feedback"]["stdout"] == "2\n"
    assert step["game_state"]["tick"] == 2 and step["previous"] == 1 and step["next"] is None
    key = viewer.get("/api/v1/trajectories/run-a/steps/2/state/entities").json()
    assert key["decoded"] == [{"name": "drill", "x": i} for i in range(3)]
    diff = viewer.get("/api/v1/trajectories/run-a/steps/0/diff?to=2").json()
    entities = next(k for k in diff["keys"] if k["key"] == "entities")
    assert [c["kind"] for c in entities["changes"]] == ["added", "added"]
    tree = viewer.get("/api/v1/trees/search-1").json()
    assert [d["depth"] for d in tree["depths"]] == [0, 1, 2] and tree["depths"][2]["nodes"][0]["best"]
    status = viewer.get("/api/v1/status").json()
    assert status["statistics"]["trajectories"] == 3 and status["migrations"]["up_to_date"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/trajectories/nope", 404), ("/trajectories/run-a/steps/9", 404), ("/trees/nope", 404), ("/nowhere", 404),
        ("/api/v1/trajectories/nope", 404), ("/api/v1/trajectories/run-a/steps/1/state/nokey", 404),
        ("/trajectories/a%20b", 400), ("/trajectories/run-a/steps/-1", 400), ("/trajectories/run-a/steps/x", 400),
        ("/trajectories/run-a/steps/99999999999999999999", 400), ("/?order=body", 400), ("/?limit=abc", 400),
        ("/?limit=5000", 400), ("/?success=maybe", 400), ("/?since=yesterday", 400), ("/?cursor=forged", 400),
        ("/?dir=up", 400), ("/trajectories/run-a/steps/0/diff", 400), ("/trajectories/run-a/steps/0/diff?to=x", 400),
        ("/api/v1/trajectories?order=nope", 400), ("/trajectories/run-a?page=0", 400),
    ],
)  # fmt: skip
def test_unknown_ids_are_404_and_bad_parameters_400_never_a_traceback(
    viewer: TestClient, path: str, status: int
) -> None:
    response = viewer.get(path)
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text and 'File "' not in response.text
    if path.startswith("/api/"):
        assert response.json()["error"]["status"] == status
    else:
        assert "<h1>" in response.text and "Back to the trajectories" in response.text


def test_writes_are_refused(viewer: TestClient) -> None:
    assert viewer.post("/").status_code == 405 and viewer.delete("/trajectories/run-a").status_code == 405


def test_every_value_is_escaped(viewer: TestClient) -> None:
    for path in ("/trajectories/run-a-fork", "/trajectories/run-a-fork/steps/2", "/?q=fork"):
        text = viewer.get(path).text
        assert XSS not in text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in viewer.get("/trajectories/run-a-fork/steps/2").text
    headers = viewer.get("/").headers
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self': no inline script
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_requests_for_another_host_name_are_refused(viewer: TestClient) -> None:
    for host in ("evil.example", "evil.example:8765", "127.0.0.1:9999", "127.0.0.1.evil.example:8765"):
        assert viewer.get("/", headers={"host": host}).status_code == 421
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765"):
        assert viewer.get("/", headers={"host": host}).status_code == 200


def test_a_token_is_required_when_configured(filled_url: str) -> None:
    with DatabaseClient(filled_url, read_only=True) as client:
        app = create_app(client, hosts=allowed_hosts("10.1.2.3", 8765), token="s3cret-token")
        with TestClient(app, base_url="http://10.1.2.3:8765", follow_redirects=False) as http:
            assert http.get("/").status_code == 401 and http.get("/api/v1/status").status_code == 401
            assert http.get("/?token=wrong").status_code == 401
            entered = http.get("/?token=s3cret-token&task=iron")
            assert entered.status_code == 303 and entered.headers["location"] == "/?task=iron"
            assert "httponly" in entered.headers["set-cookie"].lower()
            assert http.get("/?task=iron").status_code == 200  # the cookie carries it now
            http.cookies.clear()
            assert http.get("/api/v1/status", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
            assert "s3cret-token" not in http.get("/status", headers={"authorization": "Bearer s3cret-token"}).text


def test_non_loopback_hosts_need_a_token_and_loopback_names_are_recognised() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")
    assert allowed_hosts("192.168.1.5", 80) == ["192.168.1.5:80", "192.168.1.5"]
    assert {"localhost:8765", f"{socket.gethostname().lower()}:8765"} <= set(allowed_hosts("0.0.0.0", 8765))
    assert "localhost:8765" in allowed_hosts("127.0.0.1", 8765)


def test_no_password_appears_in_any_page(make_url: Any) -> None:
    url = make_url("postgres").replace("postgres@", "postgres:pw-Sekrit-42@")
    with DatabaseClient(url) as db:
        fill(db)
    with DatabaseClient(url, read_only=True) as client:
        app = create_app(client, hosts=[HOST])
        with TestClient(app, base_url=f"http://{HOST}") as http:
            for path in ("/", "/status", "/api/v1/status", "/trajectories/run-a", "/trajectories/run-a/steps/0",
                         "/trajectories/nope", "/api/v1/trajectories/run-a/steps/0?state=1"):  # fmt: skip
                assert "Sekrit" not in http.get(path).text, path


def test_the_viewer_only_takes_a_read_only_client(filled_url: str) -> None:
    with DatabaseClient(filled_url) as writable, pytest.raises(ConfigurationError, match="read_only"):
        create_app(writable, hosts=[HOST])
    with DatabaseClient(filled_url, read_only=True) as client, pytest.raises(ReadOnlyError):
        create_app(client, hosts=[HOST]).state.client.save_trajectory({"id": "intruder"})


def test_packed_strings_decode_within_the_cap() -> None:
    assert decode_packed(packed([1, 2])) == [1, 2]
    assert decode_packed("not base64 at all") == "not base64 at all"
    assert (
        decode_packed(base64.b64encode(b"plain bytes, not zlib").decode())
        == base64.b64encode(b"plain bytes, not zlib").decode()
    )
    bomb = base64.b64encode(zlib.compress(b"[" + b"0," * 5_000_000 + b"0]")).decode()
    assert decode_packed(bomb) == bomb  # inflates past the cap: left as it is
    changes = diff_states({"a": 1, "same": [1], "gone": 2}, {"a": 2, "same": [1], "new": {"x": 1}})
    assert {k["key"]: k["status"] for k in changes} == {
        "a": "changed", "gone": "removed", "new": "added", "same": "unchanged"
    }  # fmt: skip


def test_ui_command_is_documented_and_checks_its_options(tmp_path: Any) -> None:
    runner = CliRunner()
    assert "read-only web viewer" in runner.invoke(main, ["ui", "--help"]).output
    missing = runner.invoke(main, ["--url", f"sqlite:///{tmp_path / 'absent.db'}", "ui", "--port", "8799"])
    assert missing.exit_code == 1 and "does not exist" in missing.output and "Traceback" not in missing.output
    assert runner.invoke(main, ["ui", "--port", "70000"]).exit_code == 2


def test_a_port_in_use_or_a_bad_host_is_a_one_line_error(filled_url: str) -> None:
    runner = CliRunner()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = str(taken.getsockname()[1])
        busy = runner.invoke(main, ["--url", filled_url, "ui", "--port", port])
    assert busy.exit_code == 2 and busy.output.startswith("Error: cannot listen on '127.0.0.1'"), busy.output
    for host in ("a\x00b", "no such host", "/x"):
        bad = runner.invoke(main, ["--url", filled_url, "ui", "--host", host, "--token", "t"])
        assert bad.exit_code == 2 and bad.output.startswith("Error: "), bad.output
