"""Backends: the contract (``base``), the shared SQL implementation (``sql``) and one module per
database. Backend classes are imported lazily, only when selected."""

from __future__ import annotations

from importlib import import_module

from ..config import Settings
from ..errors import ConfigurationError
from .base import Backend

_BUILTIN = {
    "sqlite": "fle_db.backends.sqlite:SQLiteBackend",
    "postgres": "fle_db.backends.postgres:PostgresBackend",
}


def open_backend(settings: Settings) -> Backend:
    """Instantiate the backend ``settings.backend`` names.

    Raises:
        ConfigurationError: no backend of that name is installed (the message lists those that are).
    """
    target = _BUILTIN.get(settings.backend)
    if target is None:
        raise ConfigurationError(
            f"no fle-db backend named {settings.backend!r}; installed: {', '.join(sorted(_BUILTIN))}"
        )
    module, _, cls = target.partition(":")
    backend_cls: type[Backend] = getattr(import_module(module), cls)
    return backend_cls(settings)


__all__ = ["Backend", "open_backend"]
