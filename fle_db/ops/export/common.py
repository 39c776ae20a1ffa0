"""What every export format shares: the checkpoints it is given and how lines are written."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Protocol

import orjson
import zstandard

from ...storage import codec


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What one step number of a trajectory holds (any part may be absent)."""

    step_number: int
    step: dict[str, Any] | None
    agent_output: dict[str, Any] | None
    environment_feedback: dict[str, Any] | None
    game_state: dict[str, Any] | None


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class Sink(Protocol):
    """One export format: :meth:`add` per trajectory, then :meth:`finish`."""

    needs_states: bool
    skipped: int

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        """Write one trajectory; return the number of checkpoints written."""
        ...

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        """End the output; return what the format adds to the export's report (often nothing)."""
        ...


def json_text(value: Any) -> str | None:
    """Canonical (sorted-key) JSON text of a value; None stays None."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if value is not None else None


def text_or_none(value: Any) -> str | None:
    """``value`` if it is a string, else None (a column of text)."""
    return value if isinstance(value, str) else None


def line(record: dict[str, Any]) -> bytes:
    """One JSON Lines line."""
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


@contextmanager
def compressed(raw: IO[bytes], compress: bool) -> Iterator[Writable]:
    """``raw`` itself, or a zstd stream (with content checksum) into it, ended on success."""
    if not compress:
        yield raw
        return
    # A context of its own: the thread's shared one (codec.compressor) must not hold a stream open.
    writer = zstandard.ZstdCompressor(level=codec.ZSTD_LEVEL, write_checksum=True).stream_writer(raw, closefd=False)
    yield writer
    writer.flush(zstandard.FLUSH_FRAME)  # ends the frame (with its checksum); raw stays open
