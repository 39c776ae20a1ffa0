"""Export trajectories to files and import them back.

Formats written by :func:`export_data`, each documented field by field in its module:
``jsonl`` (importable; :mod:`.jsonl`), ``chat`` (fine-tuning; :mod:`.chat`) and ``parquet``
(analysis; :mod:`.parquet`).

Every format is written to a temporary file beside ``path`` (owner-only, 0600), fsynced and
renamed over ``path``: a reader never sees a partial export, and a failed one leaves nothing.
Memory is bounded by bytes, whatever the number of trajectories, steps or their sizes: a page
of at most 1,024 step numbers holding at most 4 MiB of stored records (decoded one checkpoint at
a time), and game states read in batches of at most 4 MiB raw (one at a time when larger).

Import (:func:`import_data`, ``jsonl`` only, one verified trajectory at a time): see :mod:`.importer`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ...backends.base import StoredStep, TrajectoryFilter
from ...errors import ValidationError
from ...storage import codec
from ...storage.records import iter_records
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

#: A page of step numbers: at most this many, holding at most _PAGE_BYTES of stored records
#: (always at least one number, whatever its size).
_PAGE_STEPS = 1024
_PAGE_BYTES = 4 * 1024 * 1024
#: Game states read at once: at most this many raw bytes (always at least one state).
_STATE_BYTES = 4 * 1024 * 1024


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
            sink = ParquetSink(raw, client.settings.max_payload_bytes)
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
    """A trajectory, its metadata and its checkpoints in step order, read as they are consumed
    so that memory is bounded by bytes, whatever the data: records in pages of step numbers
    holding at most :data:`_PAGE_BYTES` stored (decoded one checkpoint at a time), game states in
    batches of at most :data:`_STATE_BYTES` raw (one at a time when larger)."""
    trajectory = client.load_trajectory(tid)
    metadata = client.load_metadata(tid)

    def checkpoints() -> Iterator[Checkpoint]:
        after: int | None = None
        more = True
        while more:
            page = client._backend.load_step_page(tid, after, _PAGE_STEPS, _PAGE_BYTES)
            records = [page.steps, page.agent_outputs, page.environment_feedbacks]
            numbers = sorted({row.step_number for rows in records for row in rows})
            yield from _page(client, tid, numbers, records, with_states)
            after, more = (numbers[-1], page.more) if numbers else (after, False)

    return trajectory, metadata, checkpoints()


def _page(
    client: DatabaseClient, tid: str, numbers: list[int], records: list[list[StoredStep]], with_states: bool
) -> Iterator[Checkpoint]:
    """The checkpoints ``numbers`` of a page; each record is decoded as it is yielded."""
    state_of = {row.step_number: row.game_state_id for row in records[0] if row.game_state_id} if with_states else {}
    sizes = client._backend.game_state_sizes(list(dict.fromkeys(state_of.values()))) if state_of else {}
    steps, outputs, feedbacks = (_Ahead(rows, iter_records(client._records.decoder, rows)) for rows in records)
    states: dict[str, dict[str, Any]] = {}
    for index, number in enumerate(numbers):
        state_id = state_of.get(number)
        if state_id is not None and state_id not in states:
            states = {}  # the previous batch goes before the next is read
            states = client.load_game_states(_state_batch(numbers, index, state_of, sizes))
        step, output, feedback = steps.take(number), outputs.take(number), feedbacks.take(number)
        yield Checkpoint(
            number,
            {"trajectory_id": tid, "step_number": number, **step[1], "game_state_id": step[0].game_state_id}
            if step is not None
            else None,
            {"trajectory_id": tid, "step_number": number, **output[1]} if output is not None else None,
            {"trajectory_id": tid, "step_number": number, **feedback[1]} if feedback is not None else None,
            states.get(state_id) if state_id else None,
        )


def _state_batch(numbers: list[int], start: int, state_of: dict[int, str], sizes: dict[str, int]) -> list[str]:
    """The distinct states of ``numbers[start:]``, in order, while their raw sizes sum to at most
    :data:`_STATE_BYTES` (always the first)."""
    batch: dict[str, None] = {}
    total = 0
    for number in itertools.islice(numbers, start, None):
        state_id = state_of.get(number)
        if state_id is None or state_id in batch:
            continue
        total += sizes.get(state_id, 0)
        if batch and total > _STATE_BYTES:
            break
        batch[state_id] = None
    return list(batch)


class _Ahead:
    """The decoded records of one table, taken by step number in ascending order."""

    def __init__(self, rows: list[StoredStep], values: Iterator[Any]) -> None:
        self._pairs = zip(rows, values, strict=True)
        self._next = next(self._pairs, None)

    def take(self, number: int) -> tuple[StoredStep, Any] | None:
        """The row numbered ``number`` and its value, or None when the table has none."""
        pair = self._next
        if pair is None or pair[0].step_number != number:
            return None
        self._next = next(self._pairs, None)
        return pair


__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "export_data", "import_data"]
