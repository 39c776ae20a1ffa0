"""fle-db for asyncio programs: :class:`AsyncDatabaseClient` (see :mod:`fle_db.aio.client`)."""

from ._runner import AsyncBackupScheduler
from .client import AsyncDatabaseClient

__all__ = ["AsyncBackupScheduler", "AsyncDatabaseClient"]
