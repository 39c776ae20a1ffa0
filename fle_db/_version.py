"""The version of fle-db: defined here only (``pyproject.toml`` reads it; backups and exports record it)."""

__version__ = "0.1.0"
