"""The conformance suite shipped in ``fle_db.testing``, run on every built-in backend: SQLite
(a file, and in memory), PostgreSQL and MySQL/MariaDB, a fresh database per test."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import pytest

from fle_db.testing import BackendConformance


class TestSQLite(BackendConformance):
    @pytest.fixture
    def new_database_url(self, make_url: Callable[[str], str]) -> Callable[[], str]:
        return lambda: make_url("sqlite")


class TestSQLiteInMemory(BackendConformance):
    shared_database: ClassVar[bool] = False

    @pytest.fixture
    def new_database_url(self) -> Callable[[], str]:
        return lambda: "sqlite://"


class TestPostgres(BackendConformance):
    @pytest.fixture
    def new_database_url(self, make_url: Callable[[str], str]) -> Callable[[], str]:
        return lambda: make_url("postgres")


class TestMySQL(BackendConformance):
    @pytest.fixture
    def new_database_url(self, make_url: Callable[[str], str]) -> Callable[[], str]:
        return lambda: make_url("mysql")
