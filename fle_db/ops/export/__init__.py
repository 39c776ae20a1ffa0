"""Export trajectories to files and import them back.

Formats written by :func:`export_data`, each documented field by field in its module:
``jsonl`` (importable; :mod:`.jsonl`), ``chat`` (fine-tuning; :mod:`.chat`) and ``parquet``
(analysis; :mod:`.parquet`).

Every format is written to a temporary file beside ``path`` (owner-only, 0600), fsynced and
renamed over ``path``: a reader never sees a partial export, and a failed one leaves nothing.
Memory holds one trajectory's records (without game states) plus 64 game states at a time,
whatever the number of trajectories exported.

Import (:func:`import_data`, ``jsonl`` only, one verified trajectory at a time): see :mod:`.importer`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ...backends.base import TrajectoryFilter
from ...errors import ValidationError
from ...storage import codec
from ..files import atomic_file, checked_path
from .chat import ChatSink
from .common import Checkpoint, Sink, compressed
from .importer import Progress, import_data
from .jsonl import FORMAT_NAME, FORMAT_VERSION, JsonlSink, header
from .parquet import ParquetSink, pyarrow_modules

if TYPE_CHECKING:
    from ...client import DatabaseClient

log = logging.getLogger("fle_db")

FORMATS = ("jsonl", "chat", "parquet")

_STATES_PER_QUERY = 64


def export_data(
    client: DatabaseClient,
    trajectory_ids: Iterable[str],
    path: str | os.PathLike[str],
    fmt: str,
    criteria: TrajectoryFilter,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the trajectories ``trajectory_ids`` yields (parents first) to ``path`` in ``fmt``.

    Returns ``{"path", "format", "trajectories", "checkpoints", "skipped", "bytes", "seconds"}``.
    Raises ValidationError for an unknown format, ConfigurationError when ``parquet`` lacks
    pyarrow; database errors propagate and leave no file behind.
    """
    if fmt not in FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    target = checked_path(path, "path")
    compress = target.name.endswith(".zst")
    if fmt == "parquet" and compress:
        raise ValidationError("parquet files compress their pages (zstd) themselves: drop the .zst suffix")
    if fmt == "parquet":
        pyarrow_modules()  # fail before creating anything when the extra is missing
    started = time.perf_counter()
    trajectories = checkpoints = 0
    with atomic_file(target) as raw, compressed(raw, compress) as out:
        sink: Sink
        if fmt == "jsonl":
            sink = JsonlSink(out, header(client, criteria))
        elif fmt == "chat":
            sink = ChatSink(out)
        else:
            sink = ParquetSink(raw)
        for tid in trajectory_ids:
            trajectory, metadata, records = _read_trajectory(client, tid, sink.needs_states)
            with codec.gc_paused():  # decoding builds many objects, no cycles (see codec)
                checkpoints += sink.add(trajectory, metadata, records)
            trajectories += 1
            if progress is not None:
                progress(trajectories, 0)
        sink.finish(trajectories, checkpoints)
    seconds = time.perf_counter() - started
    log.info("exported %d trajectories (%d checkpoints) to %s in %.1f s", trajectories, checkpoints, target, seconds)
    return {
        "path": str(target),
        "format": fmt,
        "trajectories": trajectories - sink.skipped,
        "checkpoints": checkpoints,
        "skipped": sink.skipped,
        "bytes": target.stat().st_size,
        "seconds": round(seconds, 3),
    }


def _read_trajectory(
    client: DatabaseClient, tid: str, with_states: bool
) -> tuple[dict[str, Any], dict[str, Any], Iterator[Checkpoint]]:
    """A trajectory, its metadata and its checkpoints in step order; game states are read
    :data:`_STATES_PER_QUERY` at a time as the checkpoints are consumed."""
    trajectory = client.load_trajectory(tid)
    metadata = client.load_metadata(tid)
    parts = {
        "step": {r["step_number"]: r for r in client.load_steps(tid)},
        "agent_output": {r["step_number"]: r for r in client.load_agent_outputs(tid)},
        "environment_feedback": {r["step_number"]: r for r in client.load_environment_feedbacks(tid)},
    }
    numbers = sorted(set().union(*parts.values()))

    def checkpoints() -> Iterator[Checkpoint]:
        for i in range(0, len(numbers), _STATES_PER_QUERY):
            chunk = numbers[i : i + _STATES_PER_QUERY]
            state_ids = [s["game_state_id"] for n in chunk if (s := parts["step"].get(n)) and s["game_state_id"]]
            states = client.load_game_states(state_ids) if with_states and state_ids else {}
            for n in chunk:
                step = parts["step"].pop(n, None)
                state_id = step["game_state_id"] if step else None
                yield Checkpoint(
                    n,
                    step,
                    parts["agent_output"].pop(n, None),
                    parts["environment_feedback"].pop(n, None),
                    states.get(state_id) if state_id else None,
                )

    return trajectory, metadata, checkpoints()


__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "export_data", "import_data"]
