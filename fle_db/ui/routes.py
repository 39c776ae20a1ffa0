"""The viewer's pages and its versioned JSON API (``/api/v1/``): one handler per path.

Handlers are plain functions run in Starlette's thread pool (the client is synchronous and
thread-safe); each reads through :mod:`fle_db.ui.views`, so a page and its API endpoint show the
same data. ``?fragment=1`` on the list and trajectory pages returns only the part that live
updates replace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import orjson
from jinja2 import Environment
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from ..client import DatabaseClient
from ..errors import ValidationError
from . import views

#: Columns of the trajectory list: (order key, heading).
COLUMNS = [
    ("id", "Trajectory"),
    ("task", "Task"),
    ("agent_type", "Agent"),
    ("steps", "Steps"),
    ("total_reward", "Reward"),
    ("success", "Success"),
    ("start_time", "Started"),
    ("end_time", "Ended"),
]


class Context:
    """What every handler needs: the client and the templates."""

    def __init__(self, client: DatabaseClient, env: Environment) -> None:
        self.client = client
        self.env = env

    def page(self, template: str, status_code: int = 200, **data: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(template).render(**data), status_code)

    def error(self, request: Request, status: int, title: str, detail: str) -> Response:
        if request.url.path.startswith("/api/"):
            return _json({"error": {"status": status, "title": title, "detail": detail}}, status)
        return self.page("error.html", status, title=title, detail=detail, status=status)


def _json(data: Any, status: int = 200) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, media_type="application/json")


def _params(request: Request) -> dict[str, str]:
    return dict(request.query_params)


def _step_number(request: Request, name: str = "n") -> int:
    raw = request.path_params[name]
    if not raw.isdigit() or len(raw) > 19:
        raise ValidationError(f"step number must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


Endpoint = Callable[[Request], Any]


def _endpoint(body: Callable[[Context, Request], Response]) -> Callable[[Context], Endpoint]:
    """Bind a handler to the context and run it in the thread pool."""

    def bind(ctx: Context) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            return await run_in_threadpool(body, ctx, request)

        return endpoint

    return bind


# -- pages -------------------------------------------------------------------------------------
def list_page(ctx: Context, request: Request) -> Response:
    params = _params(request)
    data = views.trajectories(ctx.client, params)
    filters = {k: v for k, v in params.items() if k in ("task", "agent", "success", "since", "until", "q", "parent")}
    order, direction = params.get("order") or "start_time", params.get("dir") or "desc"

    def link(**changes: Any) -> str:
        merged = {**filters, "order": order, "dir": direction, **changes}
        return "/?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})

    sort_links = {
        key: link(order=key, dir="asc" if key == order and direction == "desc" else "desc") for key, _ in COLUMNS
    }
    template = "list_rows.html" if params.get("fragment") else "list.html"
    return ctx.page(
        template,
        rows=data["trajectories"],
        next_link=link(cursor=data["next_cursor"]) if data["next_cursor"] else None,
        first_link=link() if params.get("cursor") else None,
        filters=filters,
        columns=COLUMNS,
        order=order,
        direction=direction,
        sort_links=sort_links,
        fragment_url=str(request.url.include_query_params(fragment="1")),
        paged=bool(params.get("cursor")),
    )


def trajectory_page(ctx: Context, request: Request) -> Response:
    tid = request.path_params["tid"]
    data = views.trajectory(ctx.client, tid, _params(request))
    template = "trajectory_live.html" if request.query_params.get("fragment") else "trajectory.html"
    return ctx.page(template, **data, tid=tid, fragment_url=str(request.url.include_query_params(fragment="1")))


def step_page(ctx: Context, request: Request) -> Response:
    data = views.step(ctx.client, request.path_params["tid"], _step_number(request))
    return ctx.page("step.html", **data)


def diff_page(ctx: Context, request: Request) -> Response:
    data = views.diff(ctx.client, request.path_params["tid"], _step_number(request), _params(request))
    return ctx.page("diff.html", **data)


def tree_page(ctx: Context, request: Request) -> Response:
    return ctx.page("tree.html", **views.tree(ctx.client, request.path_params["tree"]))


def status_page(ctx: Context, request: Request) -> Response:
    return ctx.page("status.html", **views.status(ctx.client))


# -- JSON API ----------------------------------------------------------------------------------
def api_trajectories(ctx: Context, request: Request) -> Response:
    return _json(views.trajectories(ctx.client, _params(request)))


def api_trajectory(ctx: Context, request: Request) -> Response:
    return _json(views.trajectory(ctx.client, request.path_params["tid"], _params(request)))


def api_step(ctx: Context, request: Request) -> Response:
    with_state = request.query_params.get("state") in ("1", "true")
    return _json(views.step(ctx.client, request.path_params["tid"], _step_number(request), with_state))


def api_state_key(ctx: Context, request: Request) -> Response:
    return _json(
        views.state_value(ctx.client, request.path_params["tid"], _step_number(request), request.path_params["key"])
    )


def api_diff(ctx: Context, request: Request) -> Response:
    return _json(views.diff(ctx.client, request.path_params["tid"], _step_number(request), _params(request)))


def api_tree(ctx: Context, request: Request) -> Response:
    return _json(views.tree(ctx.client, request.path_params["tree"]))


def api_status(ctx: Context, request: Request) -> Response:
    return _json(views.status(ctx.client))


def api_index(ctx: Context, request: Request) -> Response:
    return _json({"version": 1, "endpoints": [path for path, _ in ROUTES if path.startswith("/api/v1/")]})


ROUTES: list[tuple[str, Callable[[Context], Endpoint]]] = [
    (path, _endpoint(handler))
    for path, handler in (
        ("/", list_page),
        ("/trajectories/{tid}", trajectory_page),
        ("/trajectories/{tid}/steps/{n}", step_page),
        ("/trajectories/{tid}/steps/{n}/diff", diff_page),
        ("/trees/{tree}", tree_page),
        ("/status", status_page),
        ("/api/v1", api_index),
        ("/api/v1/trajectories", api_trajectories),
        ("/api/v1/trajectories/{tid}", api_trajectory),
        ("/api/v1/trajectories/{tid}/steps/{n}", api_step),
        ("/api/v1/trajectories/{tid}/steps/{n}/state/{key}", api_state_key),
        ("/api/v1/trajectories/{tid}/steps/{n}/diff", api_diff),
        ("/api/v1/trees/{tree}", api_tree),
        ("/api/v1/status", api_status),
    )
]
