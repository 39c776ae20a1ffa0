"""The viewer's ASGI application: routes, templates, and what keeps it safe.

* **Read-only.** The app is given a client opened with ``read_only=True`` (see
  :func:`fle_db.ui.serve.run`): its connections cannot write, whatever a request asks.
* **DNS rebinding.** A request whose ``Host`` header is not one of the server's own names
  (``127.0.0.1``, ``localhost``, ``[::1]`` or the ``--host`` given, with the port) gets 421: a
  page on another site that rebinds its name to 127.0.0.1 cannot read the viewer.
* **Access token.** When one is configured (required for a non-loopback ``--host``), every
  request must carry it: ``?token=`` once (it is then kept in an HttpOnly, SameSite=Strict
  cookie) or ``Authorization: Bearer``. Compared in constant time.
* **Escaping.** Templates autoescape every value; data for scripts travels in escaped
  attributes, never in inline script; a Content-Security-Policy allows only the app's own
  script and style files.
* **Errors.** An unknown id is a 404 page (or JSON under ``/api/``), a bad parameter a 400; any
  other failure a 500 naming no internals: tracebacks go to the log, never to the client.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from ..client import DatabaseClient
from ..errors import ConfigurationError, FleDBError, NotFoundError, ValidationError

log = logging.getLogger("fle_db.ui")

HERE = Path(__file__).parent
TOKEN_COOKIE = "fle_db_ui_token"
DASH = "\u2013"  # shown for a missing value
LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def _json_attr(value: Any) -> str:
    """JSON for a ``data-`` attribute (autoescaping makes it safe there)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def _python(code: str) -> Markup:
    """Syntax-highlighted HTML of Python code; Pygments escapes the code itself."""
    return Markup(highlight(code, PythonLexer(), HtmlFormatter(nowrap=True)))


def _size(n: int | float | None) -> str:
    """Bytes in IEC units (KiB, MiB...)."""
    if n is None:
        return DASH
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _number(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def templates() -> Environment:
    """The Jinja2 environment: autoescaping on for every template."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(json_attr=_json_attr, pretty=_pretty, python=_python, size=_size, number=_number)
    return env


class Guard:
    """ASGI middleware: the Host check, the access token and the security headers."""

    def __init__(self, app: ASGIApp, hosts: Sequence[str], token: str | None) -> None:
        self.app = app
        self.hosts = frozenset(h.lower() for h in hosts)
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        host = request.headers.get("host", "").lower()
        if host not in self.hosts:
            await PlainTextResponse("421 Misdirected Request: this server does not answer for that host name", 421)(
                scope, receive, send
            )
            return
        if self.token is not None:
            given = request.query_params.get("token")
            if given is not None and hmac.compare_digest(given.encode(), self.token.encode()):
                # Keep it in a cookie and drop it from the address bar (and from history).
                query = "&".join(f"{k}={v}" for k, v in _pairs(request.url.query) if k != "token")
                response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), 303)
                response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
                await response(scope, receive, send)
                return
            presented = request.cookies.get(TOKEN_COOKIE) or request.headers.get("authorization", "").removeprefix(
                "Bearer "
            )
            if not hmac.compare_digest(presented.encode(), self.token.encode()):
                await PlainTextResponse("401 Unauthorized: open the URL with ?token=... that fle-db ui printed", 401)(
                    scope, receive, send
                )
                return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def _pairs(query: str) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in (part.partition("=") for part in query.split("&") if part)]


Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    client: DatabaseClient, *, hosts: Sequence[str], token: str | None = None, poll_seconds: float = 3.0
) -> Starlette:
    """The viewer over ``client`` (which should be opened ``read_only=True``), answering only
    for ``hosts`` (``"name:port"`` values, as browsers send them) and, with ``token``, only to
    requests that carry it.

    Raises:
        ConfigurationError: ``client`` was not opened with ``read_only=True``.
    """
    from . import routes  # routes import this module's helpers

    if not client.settings.read_only:
        raise ConfigurationError("the viewer reads through a client opened with read_only=True")
    env = templates()
    env.globals.update(poll_ms=int(poll_seconds * 1000), backend=client.settings.backend)
    state = routes.Context(client, env)
    app = Starlette(
        routes=[
            *(Route(path, handler(state), methods=["GET"]) for path, handler in routes.ROUTES),
            Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
        ],
        exception_handlers={
            NotFoundError: lambda req, exc: state.error(req, 404, "Not found", str(exc)),
            ValidationError: lambda req, exc: state.error(req, 400, "Bad request", str(exc)),
            FleDBError: lambda req, exc: state.error(req, 503, "Database error", str(exc)),
            404: lambda req, exc: state.error(req, 404, "Not found", f"no page at {req.url.path[:200]}"),
            405: lambda req, exc: state.error(req, 405, "Method not allowed", "the viewer is read-only"),
            Exception: lambda req, exc: _internal(state, req, exc),
        },
    )
    app.add_middleware(Guard, hosts=hosts, token=token)
    app.state.client = client
    return app


def _internal(state: Any, request: Request, exc: Exception) -> Response:
    log.error("fle-db ui: %s %s failed", request.method, request.url.path, exc_info=exc)
    response: Response = state.error(request, 500, "Internal error", "the server could not answer; see its log")
    return response


__all__ = ["Guard", "create_app", "templates"]
