"""Export trajectories to files and import them back.

Formats written by :func:`export_data`, each documented field by field in its module:
``jsonl`` (importable; :mod:`.jsonl`), ``chat`` and ``sft`` (fine-tuning conversations;
:mod:`.chat`), ``preference`` (TRL preference pairs from sibling branches; :mod:`.preference`),
``adp`` (Agent Data Protocol; :mod:`.adp`), ``parquet`` (analysis; :mod:`.parquet`) and ``hf``
(a Hugging Face dataset folder; :mod:`.hf`).

Every file format is written to a temporary file beside ``path`` (owner-only, 0600), fsynced and
renamed over ``path``; ``hf`` to a temporary folder beside ``path``, renamed into place (``path``
absent or an empty folder). A reader never sees a partial export, and a failed one leaves nothing.
Memory is bounded by bytes, whatever the number of trajectories, steps or their sizes: a page
of at most 1,024 step numbers holding at most 4 MiB of stored records (decoded one checkpoint at
a time), and game states read in batches of at most 4 MiB raw (one at a time when larger); the
conversation formats hold one trajectory's text (``preference``: one prompt) at a time.

Import (:func:`import_data`, ``jsonl`` only, one verified trajectory at a time): see :mod:`.importer`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ...backends.base import TrajectoryFilter
from ...errors import ValidationError
from ...storage import codec
from ..files import atomic_file, atomic_folder, checked_path
from .adp import AdpSink
from .chat import ChatSink
from .common import Sink, compressed
from .hf import HfSink
from .importer import Progress, import_data
from .jsonl import FORMAT_NAME, FORMAT_VERSION, JsonlSink, filters, header
from .parquet import ParquetSink, pyarrow_modules
from .preference import PreferenceSink
from .reader import node_stats, read_trajectory

if TYPE_CHECKING:
    from ...client import DatabaseClient

log = logging.getLogger("fle_db")

FORMATS = ("jsonl", "chat", "sft", "preference", "adp", "parquet", "hf")


def export_data(
    client: DatabaseClient,
    trajectory_ids: Iterable[str],
    path: str | os.PathLike[str],
    fmt: str,
    criteria: TrajectoryFilter,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the trajectories ``trajectory_ids`` yields (parents first) to ``path`` in ``fmt``.

    Returns ``{"path", "format", "trajectories", "checkpoints", "skipped", "bytes", "seconds"}``
    and what the format adds (``preference``: ``pairs``, ``ties``; ``hf``: ``shards``, ``rows``).
    Raises ValidationError for an unknown format, a ``.zst`` path of a format that cannot be
    compressed so, or an ``hf`` path that is not absent or an empty folder; ConfigurationError
    when ``parquet`` or ``hf`` lacks pyarrow; database errors propagate and leave nothing behind.
    """
    if fmt not in FORMATS:
        raise ValidationError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    target = checked_path(path, "path")
    compress = target.name.endswith(".zst")
    if fmt in ("parquet", "hf") and compress:
        raise ValidationError(f"{fmt} files compress their pages (zstd) themselves: drop the .zst suffix")
    if fmt in ("parquet", "hf"):
        pyarrow_modules()  # fail before creating anything when the extra is missing
    started = time.perf_counter()
    trajectories = checkpoints = 0
    with _output(target, fmt == "hf", compress) as (raw, out):
        sink: Sink
        if fmt == "jsonl":
            sink = JsonlSink(out, header(client, criteria))
        elif fmt in ("chat", "sft"):
            sink = ChatSink(out, node_stats(client) if fmt == "sft" else None)
        elif fmt == "preference":
            sink = PreferenceSink(out, client)
        elif fmt == "adp":
            sink = AdpSink(out)
        elif fmt == "hf":
            sink = HfSink(raw, node_stats(client), filters(criteria), client.settings.max_payload_bytes)
        else:
            sink = ParquetSink(raw, client.settings.max_payload_bytes)
        for tid in trajectory_ids:
            trajectory, metadata, records = read_trajectory(client, tid, sink.needs_states)
            with codec.gc_paused():  # decoding builds many objects, no cycles (see codec)
                checkpoints += sink.add(trajectory, metadata, records)
            trajectories += 1
            if progress is not None:
                progress(trajectories, 0)
        extra = sink.finish(trajectories, checkpoints)
    seconds = time.perf_counter() - started
    log.info("exported %d trajectories (%d checkpoints) to %s in %.1f s", trajectories, checkpoints, target, seconds)
    return {
        "path": str(target),
        "format": fmt,
        "trajectories": trajectories - sink.skipped,
        "checkpoints": checkpoints,
        "skipped": sink.skipped,
        "bytes": _size(target),
        "seconds": round(seconds, 3),
        **extra,
    }


@contextmanager
def _output(target: Path, folder: bool, compress: bool) -> Iterator[tuple[Any, Any]]:
    """``(raw, out)``: for a folder format the work folder twice; else the temporary file and
    what writes into it (a zstd stream when ``compress``)."""
    if folder:
        with atomic_folder(target) as work:
            yield work, work
        return
    raw: IO[bytes]
    with atomic_file(target) as raw, compressed(raw, compress) as out:
        yield raw, out


def _size(target: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    if not target.is_dir():
        return target.stat().st_size
    return sum(f.stat().st_size for f in target.rglob("*") if f.is_file())


__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "export_data", "import_data"]
