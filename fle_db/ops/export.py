"""Export trajectories to files and import them back.

Formats written by :func:`export_data`:

``jsonl`` (importable). One JSON object per line, each with a ``kind``; a ``.zst`` path is
zstd-compressed (with zstd's content checksum). Lines, in order:

* ``header``: ``format`` (``"fle-db-export"``), ``version`` (:data:`FORMAT_VERSION`),
  ``fle_db_version``, ``schema_version`` (the source database's migration revision),
  ``backend``, ``created_at`` (ISO 8601 UTC) and the ``filters`` used;
* per trajectory, parents before their forks: a ``trajectory`` line (``trajectory``: the record
  as :meth:`~fle_db.DatabaseClient.load_trajectory` returns it; ``metadata``: ``{key: value}``);
  one ``checkpoint`` line per step number in order (``trajectory_id``, ``step_number``, and
  ``step``, ``agent_output``, ``environment_feedback``, ``game_state``: each the record as loaded,
  or null when absent; ``step`` carries its ``game_state_id``); then a ``trajectory_end`` line
  with the number of checkpoints and ``digest``, the blake2b-128 of the exact bytes of the
  trajectory's lines from its ``trajectory`` line through its last ``checkpoint`` line;
* an ``end`` line with the number of trajectories and checkpoints.

Values are written by orjson exactly as loaded, so every value, game states included, comes
back equal and of the same type (the canonical JSON of what is imported is byte-equal to the
canonical JSON of what was exported).

``chat`` (fine-tuning; not importable). One line per trajectory, OpenAI's chat shape:
``{"messages": [...], "metadata": {...}}``. Messages: ``system`` with the trajectory's
``system_prompt`` key when it is a string; ``user`` with the trajectory's ``task`` when it is a
string; then per step number in order an ``assistant`` turn with the agent output's ``code``
(else the step's ``code`` or ``action``: the first non-empty string) and a ``user`` turn with the environment feedback's
``stdout`` followed by ``"Error: " + error`` when ``error`` is a non-empty string (else the same
fields of the step's ``observation``; a feedback with neither field is given as its JSON). Empty
turns are left out. ``metadata``: ``trajectory_id``, ``task``, ``agent_type``, ``total_reward``,
``success``, ``steps``. Agent reasoning, game states and metadata are not used; a trajectory
without any agent code is skipped (counted in ``skipped``).

``parquet`` (analysis; needs ``pip install 'fle-db[parquet]'``; not importable). One row per
checkpoint (a trajectory without checkpoints: one row with null ``step_number``), zstd-compressed
row groups of at most 2,048 rows or ~16 MiB of JSON. Columns: ``trajectory_id``,
``step_number`` (int64), the trajectory's ``agent_type``, ``task``, ``total_reward`` (float64),
``success`` (bool), ``parent_trajectory_id``, ``parent_step_number`` (int64), ``trajectory`` and
``metadata`` (JSON text, repeated per row), the step's ``reward`` (float64), ``step``,
``agent_output``, ``environment_feedback`` (JSON text or null), ``game_state_id`` and
``game_state`` (canonical JSON text or null).

Every format is written to a temporary file beside ``path`` (owner-only, 0600), fsynced and
renamed over ``path``: a reader never sees a partial export, and a failed one leaves nothing.
Memory is bounded by bytes, whatever the number of trajectories, steps or their sizes: a page
of at most 1,024 step numbers holding at most 4 MiB of stored records (decoded one checkpoint at
a time), and game states read in batches of at most 4 MiB raw (one at a time when larger).

Import lives in :mod:`fle_db.ops.importing`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson
import zstandard

from ..backends.base import StoredStep, TrajectoryFilter
from ..errors import (
    ConfigurationError,
    ValidationError,
)
from ..readable import agent_code, feedback_text
from ..storage import codec
from .backup import parse_instant
from .files import atomic_file, checked_path

if TYPE_CHECKING:
    from ..client import DatabaseClient

log = logging.getLogger("fle_db")

FORMAT_NAME = "fle-db-export"
#: The JSONL layout version this fle-db writes and reads; a file of another version is refused.
FORMAT_VERSION = 1
FORMATS = ("jsonl", "chat", "parquet")
#: ``progress(trajectories_done, file_bytes_done)``.
Progress = Callable[[int, int], None]

#: A page of step numbers: at most this many, holding at most _PAGE_BYTES of stored records
#: (always at least one number, whatever its size).
_PAGE_STEPS = 1024
_PAGE_BYTES = 4 * 1024 * 1024
#: Game states read at once: at most this many raw bytes (always at least one state).
_STATE_BYTES = 4 * 1024 * 1024
_PARQUET_ROWS = 2048
_PARQUET_BYTES = 16 * 1024 * 1024
_RECORDS = ("step", "agent_output", "environment_feedback")
_PARQUET_HINT = "pip install 'fle-db[parquet]'"


def instant_us(value: datetime | str | float | None, what: str) -> int | None:
    """``value`` as epoch microseconds (see :func:`fle_db.ops.backup.parse_instant`: an aware
    ``datetime``, ISO 8601 with an offset, or epoch seconds); None stays None.
    Raises ValidationError naming ``what``."""
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValidationError as exc:
        raise ValidationError(f"{what}: {exc}") from None


# -- export ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """What one step number of a trajectory holds (any part may be absent)."""

    step_number: int
    step: dict[str, Any] | None
    agent_output: dict[str, Any] | None
    environment_feedback: dict[str, Any] | None
    game_state: dict[str, Any] | None


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Sink(Protocol):
    needs_states: bool
    skipped: int

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[_Checkpoint]) -> int:
        """Write one trajectory; return the number of checkpoints written."""
        ...

    def finish(self, trajectories: int, checkpoints: int) -> None: ...


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
        _pyarrow()  # fail before creating anything when the extra is missing
    started = time.perf_counter()
    trajectories = checkpoints = 0
    with atomic_file(target) as raw, _compressed(raw, compress) as out:
        sink: _Sink
        if fmt == "jsonl":
            sink = _JsonlSink(out, _header(client, criteria))
        elif fmt == "chat":
            sink = _ChatSink(out)
        else:
            sink = _ParquetSink(raw)
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


def _header(client: DatabaseClient, criteria: TrajectoryFilter) -> dict[str, Any]:
    from .. import __version__

    def iso(us: int | None) -> str | None:
        return datetime.fromtimestamp(us / 1e6, UTC).isoformat() if us is not None else None

    return {
        "kind": "header",
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fle_db_version": __version__,
        "schema_version": client.get_migration_status()["current_version"],
        "backend": client.settings.backend,
        "created_at": datetime.now(UTC).isoformat(),
        "filters": {
            "trajectory_ids": list(criteria.trajectory_ids) if criteria.trajectory_ids is not None else None,
            "task": criteria.task,
            "agent_type": criteria.agent_type,
            "since": iso(criteria.since_us),
            "until": iso(criteria.until_us),
        },
    }


def _read_trajectory(
    client: DatabaseClient, tid: str, with_states: bool
) -> tuple[dict[str, Any], dict[str, Any], Iterator[_Checkpoint]]:
    """A trajectory, its metadata and its checkpoints in step order, read as they are consumed
    so that memory is bounded by bytes, whatever the data: records in pages of step numbers
    holding at most :data:`_PAGE_BYTES` stored (decoded one checkpoint at a time), game states in
    batches of at most :data:`_STATE_BYTES` raw (one at a time when larger)."""
    trajectory = client.load_trajectory(tid)
    metadata = client.load_metadata(tid)

    def checkpoints() -> Iterator[_Checkpoint]:
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
) -> Iterator[_Checkpoint]:
    """The checkpoints ``numbers`` of a page; each record is decoded as it is yielded."""
    state_of = {row.step_number: row.game_state_id for row in records[0] if row.game_state_id} if with_states else {}
    sizes = client._backend.game_state_sizes(list(dict.fromkeys(state_of.values()))) if state_of else {}
    steps, outputs, feedbacks = (_Ahead(rows, client._iter_record_values(rows)) for rows in records)
    states: dict[str, dict[str, Any]] = {}
    for index, number in enumerate(numbers):
        state_id = state_of.get(number)
        if state_id is not None and state_id not in states:
            states = {}  # the previous batch goes before the next is read
            states = client.load_game_states(_state_batch(numbers, index, state_of, sizes))
        step, output, feedback = steps.take(number), outputs.take(number), feedbacks.take(number)
        yield _Checkpoint(
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


class _JsonlSink:
    needs_states = True
    skipped = 0

    def __init__(self, out: _Writable, header: dict[str, Any]) -> None:
        self._out = out
        out.write(_line(header))

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[_Checkpoint]) -> int:
        tid = trajectory["id"]
        digest = hashlib.blake2b(digest_size=16)

        def emit(record: dict[str, Any]) -> None:
            data = _line(record)
            digest.update(data)
            self._out.write(data)

        emit({"kind": "trajectory", "trajectory": trajectory, "metadata": metadata})
        count = 0
        for cp in checkpoints:
            emit(
                {
                    "kind": "checkpoint",
                    "trajectory_id": tid,
                    "step_number": cp.step_number,
                    "step": cp.step,
                    "agent_output": cp.agent_output,
                    "environment_feedback": cp.environment_feedback,
                    "game_state": cp.game_state,
                }
            )
            count += 1
        self._out.write(
            _line({"kind": "trajectory_end", "trajectory_id": tid, "checkpoints": count, "digest": digest.hexdigest()})
        )
        return count

    def finish(self, trajectories: int, checkpoints: int) -> None:
        self._out.write(_line({"kind": "end", "trajectories": trajectories, "checkpoints": checkpoints}))


class _ChatSink:
    needs_states = False

    def __init__(self, out: _Writable) -> None:
        self._out = out
        self.skipped = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[_Checkpoint]) -> int:
        messages: list[dict[str, str]] = []
        for role, text in (("system", trajectory.get("system_prompt")), ("user", trajectory.get("task"))):
            if isinstance(text, str) and text:
                messages.append({"role": role, "content": text})
        count = 0
        for cp in checkpoints:
            count += 1
            code = agent_code(cp.step, cp.agent_output)
            if code:
                messages.append({"role": "assistant", "content": code})
            answer = feedback_text(cp.step, cp.environment_feedback)
            if answer:
                messages.append({"role": "user", "content": answer})
        if not any(m["role"] == "assistant" for m in messages):
            self.skipped += 1
            return count
        meta = {key: trajectory.get(key) for key in ("task", "agent_type", "total_reward", "success")}
        self._out.write(
            _line({"messages": messages, "metadata": {"trajectory_id": trajectory["id"], **meta, "steps": count}})
        )
        return count

    def finish(self, trajectories: int, checkpoints: int) -> None:
        return None


class _ParquetSink:
    needs_states = True
    skipped = 0

    def __init__(self, raw: IO[bytes]) -> None:
        pa, pq = _pyarrow()
        self._pa = pa
        string, i64, f64 = pa.string(), pa.int64(), pa.float64()
        self._schema = pa.schema(
            [
                ("trajectory_id", string),
                ("step_number", i64),
                ("agent_type", string),
                ("task", string),
                ("total_reward", f64),
                ("success", pa.bool_()),
                ("parent_trajectory_id", string),
                ("parent_step_number", i64),
                ("trajectory", string),
                ("metadata", string),
                ("reward", f64),
                ("step", string),
                ("agent_output", string),
                ("environment_feedback", string),
                ("game_state_id", string),
                ("game_state", string),
            ]
        )
        self._writer = pq.ParquetWriter(raw, self._schema, compression="zstd")
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[_Checkpoint]) -> int:
        reward = trajectory.get("total_reward")
        common = {
            "trajectory_id": trajectory["id"],
            "agent_type": _str_or_none(trajectory.get("agent_type")),
            "task": _str_or_none(trajectory.get("task")),
            "total_reward": float(reward)
            if isinstance(reward, (int, float)) and not isinstance(reward, bool)
            else None,
            "success": trajectory.get("success") if isinstance(trajectory.get("success"), bool) else None,
            "parent_trajectory_id": trajectory.get("parent_trajectory_id"),
            "parent_step_number": trajectory.get("parent_step_number"),
            "trajectory": _json_text(trajectory),
            "metadata": _json_text(metadata),
        }
        count = 0
        for cp in checkpoints:
            step = dict(cp.step) if cp.step is not None else None
            state_id = step.pop("game_state_id", None) if step is not None else None
            step_reward = step.get("reward") if step is not None else None
            self._append(
                {
                    **common,
                    "step_number": cp.step_number,
                    "reward": float(step_reward)
                    if isinstance(step_reward, (int, float)) and not isinstance(step_reward, bool)
                    else None,
                    "step": _json_text(step),
                    "agent_output": _json_text(cp.agent_output),
                    "environment_feedback": _json_text(cp.environment_feedback),
                    "game_state_id": state_id,
                    "game_state": _json_text(cp.game_state),
                }
            )
            count += 1
        if not count:
            self._append({**common, "step_number": None})
        return count

    def _append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._bytes += sum(len(v) for v in row.values() if isinstance(v, str))
        if len(self._rows) >= _PARQUET_ROWS or self._bytes >= _PARQUET_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows, self._bytes = [], 0

    def finish(self, trajectories: int, checkpoints: int) -> None:
        self._flush()
        self._writer.close()


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or ConfigurationError naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ConfigurationError(f"format='parquet' needs pyarrow: {_PARQUET_HINT}") from exc
    return pyarrow, pyarrow.parquet


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json_text(value: Any) -> str | None:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode() if value is not None else None


def _line(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)


@contextmanager
def _compressed(raw: IO[bytes], compress: bool) -> Iterator[_Writable]:
    """``raw`` itself, or a zstd stream (with content checksum) into it, ended on success."""
    if not compress:
        yield raw
        return
    writer = zstandard.ZstdCompressor(level=3, write_checksum=True).stream_writer(raw, closefd=False)
    yield writer
    writer.flush(zstandard.FLUSH_FRAME)  # ends the frame (with its checksum); raw stays open


__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "export_data", "instant_us"]
