"""Backends: the contract (``base``), the registry (``registry``: names, entry points, URL
schemes), the shared SQL implementation (``sql``) and one module per database. Backend classes
are imported lazily, only when selected."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import registry
from .base import Backend

if TYPE_CHECKING:
    from ..config import Settings


def open_backend(settings: Settings) -> Backend:
    """Instantiate the backend ``settings.backend`` names.

    Raises:
        ConfigurationError: no backend of that name is installed (the message lists those that
            are), or it cannot be imported.
        BackendUnavailableError: the backend cannot open its database.
    """
    return registry.backend_class(settings.backend)(settings)


__all__ = ["Backend", "open_backend", "registry"]
