"""Testing helpers shipped with fle-db: the backend conformance suite.

A backend (built in or third-party) proves it keeps the contract of
the role contracts of :mod:`fle_db.backends.base` by running :class:`BackendConformance` (every
role; those it does not implement are skipped) against itself, in a few lines of its own test
suite::

    # tests/test_conformance.py
    import pytest
    from fle_db.testing import BackendConformance

    class TestMyStore(BackendConformance):
        @pytest.fixture
        def new_database_url(self, tmp_path_factory):
            return lambda: f"mystore:///{tmp_path_factory.mktemp('db') / 'x.db'}"

Needs pytest and hypothesis (``pip install 'fle-db[testing]'``).
"""

from __future__ import annotations

from .conformance import (
    AdminStoreConformance,
    CheckpointStoreConformance,
    HistoryStoreConformance,
    SearchStoreConformance,
    assert_same_json,
    require_role,
)
from .suite import BackendConformance
from .tail import TailStoreConformance

__all__ = [
    "AdminStoreConformance",
    "BackendConformance",
    "CheckpointStoreConformance",
    "HistoryStoreConformance",
    "SearchStoreConformance",
    "TailStoreConformance",
    "assert_same_json",
    "require_role",
]
