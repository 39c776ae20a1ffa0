"""The asyncio client driven from synchronous tests: :class:`SyncAdapter` runs each coroutine of an
:class:`~fle_db.AsyncDatabaseClient` on an event loop in a background thread and returns its
result (or raises its error), so a test written for ``DatabaseClient`` runs against both clients
(``client_kind`` below)."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from fle_db import AsyncDatabaseClient, DatabaseClient

T = TypeVar("T")

#: Both clients: the tests that take ``client_kind`` run against each.
CLIENT_KINDS = ["sync", "async"]


class SyncAdapter:
    """An ``AsyncDatabaseClient`` with ``DatabaseClient``'s synchronous face (tests only)."""

    def __init__(self, url: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="async-client-loop", daemon=True)
        self._thread.start()
        try:
            self.client = AsyncDatabaseClient(url, **options)
            self.run(self.client.__aenter__())
        except BaseException:
            self._stop()
            raise

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(attribute(*args, **kwargs))

        return call

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self.run(self.client.close())
            finally:
                self._stop()

    def _stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> SyncAdapter:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def client_factory(kind: str) -> Callable[..., Any]:
    """``DatabaseClient``, or the adapted ``AsyncDatabaseClient``, for ``kind``."""
    return DatabaseClient if kind == "sync" else SyncAdapter


def open_client(kind: str, url: str, **options: Any) -> Iterator[Any]:
    """A fixture body: the client of ``kind`` on ``url``, closed afterwards."""
    client = client_factory(kind)(url, **options)
    try:
        yield client
    finally:
        client.close()
