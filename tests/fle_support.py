"""Helpers for the FLE tests: FLE's environment variables for a test database URL."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url


def use_fle_environment(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point FLE's variables (``FLE_DB_TYPE``, ``SQLITE_DB_FILE``, ``SKILLS_DB_*``) at ``url``."""
    parsed = make_url(url)
    for name in ("SKILLS_DB_HOST", "SKILLS_DB_PORT", "SKILLS_DB_NAME", "SKILLS_DB_USER", "SKILLS_DB_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    if parsed.get_backend_name() == "sqlite":
        monkeypatch.setenv("FLE_DB_TYPE", "sqlite")
        monkeypatch.setenv("SQLITE_DB_FILE", str(parsed.database))
        return
    server = "mysql" if parsed.get_backend_name() == "mysql" else "postgres"
    monkeypatch.setenv("FLE_DB_TYPE", server)
    monkeypatch.setenv("SKILLS_DB_HOST", str(parsed.host))
    monkeypatch.setenv("SKILLS_DB_PORT", str(parsed.port or {"mysql": 3306, "postgres": 5432}[server]))
    monkeypatch.setenv("SKILLS_DB_NAME", str(parsed.database))
    monkeypatch.setenv("SKILLS_DB_USER", str(parsed.username))
    if parsed.password:
        monkeypatch.setenv("SKILLS_DB_PASSWORD", str(parsed.password))
