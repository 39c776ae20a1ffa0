"""The SQL implementation of the backend contract, shared by every SQLAlchemy dialect."""

from __future__ import annotations

from .core import SQLBackend

__all__ = ["SQLBackend"]
