"""Which backends exist, and how a name or URL scheme selects one.

The built-in backends (``sqlite``, ``postgres``, ``mysql``) ship in this package and are always
present, even in a source checkout whose distribution metadata is stale. Any other backend is
registered by a distribution through an entry point in the group ``fle_db.backends`` whose name
is the backend's name and whose value is its class::

    [project.entry-points."fle_db.backends"]
    mystore = "mystore_fle:MyStoreBackend"

A backend is then selected by ``FLE_DB_TYPE=mystore`` (or ``db_type="mystore"``) or by a URL whose
scheme is its name (``mystore://...`` or ``mystore+driver://...``). Backend modules are imported
only when selected, so an installed backend whose driver is missing costs nothing until used.
"""

from __future__ import annotations

from functools import cache
from importlib import import_module
from importlib.metadata import entry_points

from ..errors import ConfigurationError
from .base import CheckpointStore

#: The group third-party distributions register backends in.
ENTRY_POINT_GROUP = "fle_db.backends"

BUILTIN: dict[str, str] = {
    "sqlite": "fle_db.backends.sqlite:SQLiteBackend",
    "postgres": "fle_db.backends.postgres:PostgresBackend",
    "mysql": "fle_db.backends.mysql:MySQLBackend",
}
#: Other spellings of the built-in names, accepted in ``FLE_DB_TYPE`` and as URL schemes.
ALIASES = {
    "sqlite3": "sqlite",
    "postgresql": "postgres",
    "psql": "postgres",
    "mariadb": "mysql",
}


def available_backends() -> dict[str, str]:
    """Every selectable backend: name -> ``"module:Class"`` (built-ins, then entry points).

    An entry point cannot replace a built-in: a clash is reported when that name is selected
    (:func:`backend_class`), never resolved silently.
    """
    found = dict(BUILTIN)
    for name, target in _entry_points().items():
        found.setdefault(name, target)
    return dict(sorted(found.items()))


def canonical_name(raw: str) -> str | None:
    """The backend a name or URL scheme (``mysql+pymysql`` counts as ``mysql``) selects, or None."""
    name = raw.strip().lower().partition("+")[0]
    name = ALIASES.get(name, name)
    if name in BUILTIN:  # the common case reads no distribution metadata
        return name
    return name if name in _entry_points() else None


def unknown_backend(what: str) -> ConfigurationError:
    """The error for a name no installed backend has; it lists those that are installed."""
    return ConfigurationError(
        f"{what} is not an installed fle-db backend; installed: {', '.join(available_backends())} "
        f"(third-party backends register an entry point in the group {ENTRY_POINT_GROUP!r})"
    )


def backend_class(name: str) -> type[CheckpointStore]:
    """Import and return the class of the backend called ``name`` (a canonical name).

    Raises:
        ConfigurationError: no such backend; its module cannot be imported (the message names
            the missing module); two distributions claim the name; or the entry point is not a
            :class:`~fle_db.backends.base.CheckpointStore` subclass named ``name``.
    """
    return _load(name)


@cache
def _load(name: str) -> type[CheckpointStore]:
    target = available_backends().get(name)
    if target is None:
        raise unknown_backend(f"{name!r}")
    if name in BUILTIN and _entry_points().get(name, target) != target:
        raise ConfigurationError(
            f"the fle-db backend name {name!r} is built in, but an installed distribution also registers "
            f"{_entry_points()[name]!r} under it in {ENTRY_POINT_GROUP!r}; rename that entry point"
        )
    module_name, _, attribute = target.partition(":")
    try:
        loaded = getattr(import_module(module_name), attribute)
    except ImportError as exc:
        raise ConfigurationError(f"the fle-db backend {name!r} ({target}) cannot be imported: {exc}") from exc
    except AttributeError:
        raise ConfigurationError(f"the fle-db backend {name!r} points at {target}, which does not exist") from None
    if not (isinstance(loaded, type) and issubclass(loaded, CheckpointStore)):
        raise ConfigurationError(
            f"the fle-db backend {name!r} ({target}) is not a fle_db Backend subclass (CheckpointStore or Backend)"
        )
    if getattr(loaded, "name", None) != name:
        raise ConfigurationError(
            f"the fle-db backend registered as {name!r} ({target}) calls itself {getattr(loaded, 'name', None)!r}"
        )
    return loaded


def _entry_points() -> dict[str, str]:
    """Entry points of the ``fle_db.backends`` group (read on every call: a test may install one)."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


__all__ = ["ALIASES", "BUILTIN", "ENTRY_POINT_GROUP", "available_backends", "backend_class", "canonical_name"]
