"""Testing helpers shipped with fle-db: the backend conformance suite.

A backend (built in or third-party) proves it keeps the contract of
:class:`fle_db.backends.base.Backend` by running :class:`BackendConformance` against itself, in a
few lines of its own test suite::

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

from .conformance import BackendConformance, assert_same_json

__all__ = ["BackendConformance", "assert_same_json"]
