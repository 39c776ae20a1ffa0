"""The whole conformance suite: every role's suite in one class."""

from __future__ import annotations

from .conformance import (
    AdminStoreConformance,
    CheckpointStoreConformance,
    HistoryStoreConformance,
    SearchStoreConformance,
)
from .tail import TailStoreConformance


class BackendConformance(
    CheckpointStoreConformance,
    SearchStoreConformance,
    AdminStoreConformance,
    HistoryStoreConformance,
    TailStoreConformance,
):
    """The whole conformance suite: every role, each skipped where the backend lacks it.
    Subclass it as ``Test<YourBackend>`` and provide the ``new_database_url`` fixture (see
    :mod:`fle_db.testing.conformance`); or subclass only the role suites you want to run."""


__all__ = ["BackendConformance"]
