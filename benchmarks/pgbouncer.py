"""A throwaway PgBouncer in front of one PostgreSQL server, for tests and benchmarks.

:class:`PgBouncer` starts Debian's ``pgbouncer`` binary on a free loopback port, configured in a
fresh temporary directory (``pool_mode = transaction`` by default, ``auth_type = trust``, every
database forwarded to the server of the given URL), and stops it on exit::

    with PgBouncer("postgresql://postgres@127.0.0.1:5432/postgres") as bouncer:
        client = DatabaseClient(bouncer.url("postgresql://postgres@127.0.0.1:5432/mydb"))

pgbouncer refuses to run as root: started by root, it runs as the ``postgres`` user (the
server's owner on Debian), otherwise as the caller. The configuration is PgBouncer's stock one
apart from what this needs, so a client that works here works behind a default install;
``ignore_startup_parameters`` is empty unless given (PgBouncer 1.18 then refuses clients that
send startup ``options``).

Shared by ``tests/test_pgbouncer.py`` and ``benchmarks.concurrent``; it lives here, not in
``fle_db.testing``, because it is tooling for this repository (it runs a system binary and may
switch users), and ``fle_db.testing`` imports pytest and hypothesis, which the benchmarks do
not install.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

#: How long :meth:`PgBouncer.start` waits for the port to accept connections.
START_TIMEOUT_S = 15.0


def available() -> str | None:
    """Why PgBouncer cannot be started here (None if it can): the binary is missing."""
    if shutil.which("pgbouncer") is None:
        return "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PgBouncer:
    """One pgbouncer process, pooling connections to the server of ``server_url``.

    Args:
        server_url: a ``postgresql://`` URL of the server (its host, port and user are used; the
            database part is not: every database is forwarded).
        pool_mode: ``transaction`` (the default), ``session`` or ``statement``.
        pool_size: server connections per (database, user) pair (``default_pool_size``).
        max_client_conn: client connections PgBouncer accepts.
        ignore_startup_parameters: startup parameters PgBouncer should accept and drop.

    Not thread-safe; one instance per process. :meth:`stop` is idempotent and also runs at
    interpreter exit.
    """

    def __init__(
        self,
        server_url: str,
        *,
        pool_mode: str = "transaction",
        pool_size: int = 20,
        max_client_conn: int = 500,
        ignore_startup_parameters: Sequence[str] = (),
    ) -> None:
        parts = urlsplit(server_url)
        self.server_host = parts.hostname or "127.0.0.1"
        self.server_port = parts.port or 5432
        self.user = parts.username or "postgres"
        self.pool_mode = pool_mode
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.ignore_startup_parameters = tuple(ignore_startup_parameters)
        self.port = 0
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, database_url: str) -> str:
        """``database_url`` (a database on the pooled server) pointed at this PgBouncer instead."""
        parts = urlsplit(database_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def log(self) -> str:
        """PgBouncer's log so far (empty before :meth:`start`)."""
        if self._dir is None or not (self._dir / "pgbouncer.log").exists():
            return ""
        return (self._dir / "pgbouncer.log").read_text(errors="replace")

    def _config(self, directory: Path) -> str:
        return "\n".join(
            [
                "[databases]",
                f"* = host={self.server_host} port={self.server_port}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {directory / 'userlist.txt'}",
                f"pool_mode = {self.pool_mode}",
                f"default_pool_size = {self.pool_size}",
                f"max_client_conn = {self.max_client_conn}",
                f"ignore_startup_parameters = {','.join(self.ignore_startup_parameters)}",
                f"logfile = {directory / 'pgbouncer.log'}",
                f"pidfile = {directory / 'pgbouncer.pid'}",
                "",
            ]
        )

    def start(self) -> PgBouncer:
        """Write the configuration, start pgbouncer and wait until its port accepts connections.

        Raises:
            RuntimeError: pgbouncer is missing, exited, or did not listen within
                :data:`START_TIMEOUT_S` (the message carries its log).
        """
        missing = available()
        if missing:
            raise RuntimeError(missing)
        if self._process is not None:
            return self
        self._dir = Path(tempfile.mkdtemp(prefix="fle_pgbouncer_"))
        self.port = _free_port()
        (self._dir / "userlist.txt").write_text(f'"{self.user}" ""\n')
        config = self._dir / "pgbouncer.ini"
        config.write_text(self._config(self._dir))
        run_as: str | None = None
        if os.geteuid() == 0:  # pgbouncer refuses root: run it as the server's owner
            run_as = "postgres"
            account = pwd.getpwnam(run_as)
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._process = subprocess.Popen(
            ["pgbouncer", "-q", str(config)],
            user=run_as,
            group=None if run_as is None else pwd.getpwnam(run_as).pw_gid,
            extra_groups=None if run_as is None else [],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        atexit.register(self.stop)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                log = self.log()
                self.stop()
                raise RuntimeError(f"pgbouncer exited at start: {log[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"pgbouncer did not listen on port {self.port}: {log[-2000:]}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop pgbouncer (SIGTERM, then SIGKILL after 5 s) and remove its directory. Idempotent."""
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
