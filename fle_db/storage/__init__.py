"""Payload and game-state storage: codec (canonical JSON, digests, compression)."""
