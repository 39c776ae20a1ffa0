"""The body of ``fle-db ui``: open the database read-only and serve the viewer."""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket
import webbrowser
from collections.abc import Callable
from typing import Any

import click

from ..client import DatabaseClient
from ..errors import ConfigurationError

#: Names a browser on this machine may use for a loopback server.
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracketed(address: str) -> str:
    return f"[{address.strip('[]')}]" if ":" in address else address


def allowed_hosts(host: str, port: int) -> list[str]:
    """The ``Host`` header values the server answers for: its own names, with the port (and
    without it on port 80). Loopback: ``127.0.0.1``, ``localhost``, ``[::1]``. A wildcard
    address (``0.0.0.0``, ``::``): those, the machine's host name and its addresses."""
    names = {_bracketed(host)}
    if is_loopback(host):
        names = set(LOOPBACK_NAMES)
    elif host.strip("[]") in ("0.0.0.0", "::"):
        names = set(LOOPBACK_NAMES) | {socket.gethostname(), socket.getfqdn()}
        try:
            names |= {_bracketed(str(info[4][0])) for info in socket.getaddrinfo(socket.gethostname(), None)}
        except OSError:
            pass  # no resolvable host name: its names above still answer
    names = {name.lower() for name in names}
    return sorted(f"{name}:{port}" for name in names) + (sorted(names) if port == 80 else [])


def run(
    url: str | None,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    open_browser: bool = False,
    token: str | None = None,
    as_json: bool = False,
    echo: Callable[[str], None] = click.echo,
) -> None:
    """Serve the viewer until interrupted (Ctrl-C).

    The database is opened with ``read_only=True``. A ``host`` that is not loopback requires an
    access token: ``token`` or, if None, a random one; the printed URL carries it.

    Raises:
        ConfigurationError: a bad host or port. BackendUnavailableError, SchemaVersionError: the
        database cannot be opened read-only (missing, or not migrated).
    """
    from .app import create_app

    if not 0 < port < 65536:
        raise ConfigurationError(f"--port must be in 1 .. 65535, got {port}")
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    with DatabaseClient(url, read_only=True) as client:
        listener = _listen(host, port)
        shown = _bracketed(host)
        address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
        if as_json:
            echo(json.dumps({"url": address, "backend": client.settings.backend, "read_only": True}))
        else:
            echo(f"fle-db ui: serving {client.settings.location} (read-only) at {address}  (Ctrl-C stops)")
        app = create_app(client, hosts=allowed_hosts(host, port), token=token)
        if open_browser:
            webbrowser.open(address)
        _serve(app, listener)


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port``, bound here rather than by uvicorn so that a bad host
    or a port in use is one typed error (uvicorn logs and exits with status 3).

    Raises:
        ConfigurationError: the host does not resolve or the port cannot be bound (in use, no right).
    """
    name = host.strip("[]")
    try:
        family, *_, address = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
        return socket.create_server(address[:2], family=family)
    except (OSError, ValueError, UnicodeError) as exc:
        raise ConfigurationError(f"cannot listen on {host!r} port {port}: {exc}") from exc


def _serve(app: Any, listener: socket.socket) -> None:
    """Serve ``app`` on ``listener`` until interrupted; the socket is closed afterwards."""
    import uvicorn

    with listener:
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        server.run(sockets=[listener])
