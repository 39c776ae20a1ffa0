"""Backends: the role contracts (``base``), the registry (``registry``: names, entry points, URL
schemes), the shared SQL implementation (the ``sql`` package) and one module of dialect hooks per
database. Backend classes are imported lazily, only when selected."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import registry
from .base import (
    AdminStore,
    Backend,
    CheckpointStore,
    HistoryStore,
    SearchStore,
    as_admin,
    as_history,
    as_search,
    roles,
)

if TYPE_CHECKING:
    from ..config import Settings


def open_backend(settings: Settings) -> CheckpointStore:
    """Instantiate the backend ``settings.backend`` names. It implements at least the
    :class:`CheckpointStore` role; :func:`as_search`, :func:`as_admin` and :func:`as_history` get an optional one.

    Raises:
        ConfigurationError: no backend of that name is installed (the message lists those that
            are), or it cannot be imported.
        BackendUnavailableError: the backend cannot open its database.
    """
    return registry.backend_class(settings.backend)(settings)


__all__ = [
    "AdminStore",
    "Backend",
    "CheckpointStore",
    "HistoryStore",
    "SearchStore",
    "as_admin",
    "as_history",
    "as_search",
    "open_backend",
    "registry",
    "roles",
]
