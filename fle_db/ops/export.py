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
(else the step's ``action``, when a string) and a ``user`` turn with the environment feedback's
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
Memory holds one trajectory's records (without game states) plus 64 game states at a time,
whatever the number of trajectories exported.

Import (:func:`import_data`, ``jsonl`` only) goes one trajectory at a time, **the trajectory
being the unit**: its lines are read and verified (shapes, step order, count and digest) before
anything of it is written, then it is compared with what the database holds and written through
the client's validated save paths. See :func:`import_data` for the exact rules. Every record of a
line must name that line's trajectory and step, so an import writes only into the trajectory it
imports. Memory holds one line and one write batch; the rest of a trajectory's lines wait in a
spooled temporary file until its digest is verified.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Protocol

import orjson
import zstandard

from ..backends.base import TrajectoryFilter
from ..errors import (
    ConfigurationError,
    ConflictError,
    DataIntegrityError,
    NotFoundError,
    SchemaVersionError,
    ValidationError,
)
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

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_STATES_PER_QUERY = 64
_IMPORT_BATCH_STEPS = 200
_IMPORT_BATCH_BYTES = 32 * 1024 * 1024
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

    def checkpoints() -> Iterator[_Checkpoint]:
        for i in range(0, len(numbers), _STATES_PER_QUERY):
            chunk = numbers[i : i + _STATES_PER_QUERY]
            state_ids = [s["game_state_id"] for n in chunk if (s := parts["step"].get(n)) and s["game_state_id"]]
            states = client.load_game_states(state_ids) if with_states and state_ids else {}
            for n in chunk:
                step = parts["step"].pop(n, None)
                state_id = step["game_state_id"] if step else None
                yield _Checkpoint(
                    n,
                    step,
                    parts["agent_output"].pop(n, None),
                    parts["environment_feedback"].pop(n, None),
                    states.get(state_id) if state_id else None,
                )

    return trajectory, metadata, checkpoints()


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
            code = _agent_code(cp)
            if code:
                messages.append({"role": "assistant", "content": code})
            answer = _feedback_text(cp)
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


def _agent_code(cp: _Checkpoint) -> str | None:
    code = (cp.agent_output or {}).get("code")
    if not isinstance(code, str):
        code = (cp.step or {}).get("action")
    return code if isinstance(code, str) else None


def _feedback_text(cp: _Checkpoint) -> str | None:
    source: Any = cp.environment_feedback
    if source is None:
        source = (cp.step or {}).get("observation")
    if isinstance(source, str):
        return source
    if not isinstance(source, dict):
        return None
    stdout, error = source.get("stdout"), source.get("error")
    if "stdout" not in source and "error" not in source:
        rest = {k: v for k, v in source.items() if k not in ("trajectory_id", "step_number")}
        return orjson.dumps(rest, option=orjson.OPT_SORT_KEYS).decode() if rest else None
    text = stdout if isinstance(stdout, str) else ""
    if isinstance(error, str) and error:
        text = f"{text}\n\nError: {error}" if text else f"Error: {error}"
    return text or None


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


# -- import ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Block:
    """One trajectory's lines, read and verified before anything of it is written. The lines
    wait in a spooled temporary file (in memory up to one import batch, then on disk), so a
    trajectory of any length, or a decompression bomb, never holds more than that in memory."""

    trajectory: dict[str, Any]
    metadata: dict[str, Any]
    first_line: int
    spool: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(_IMPORT_BATCH_BYTES))
    ends: list[int] = field(default_factory=list)  # where each checkpoint line ends in the spool
    parts: list[frozenset[str]] = field(default_factory=list)  # the records each line holds
    digest: Any = field(default_factory=lambda: hashlib.blake2b(digest_size=16))
    last_step: int = -1

    def add(self, data: bytes) -> None:
        self.spool.write(data)
        self.ends.append(self.spool.tell())

    def line(self, index: int) -> bytes:
        start = self.ends[index - 1] if index else 0
        self.spool.seek(start)
        data = self.spool.read(self.ends[index] - start)
        self.spool.seek(0, io.SEEK_END)
        return data


def import_data(
    client: DatabaseClient, path: str | os.PathLike[str], progress: Progress | None = None
) -> dict[str, Any]:
    """Import a ``jsonl`` export (plain or zstd, detected from the content) into the database.

    One trajectory at a time, in file order (an export puts parents before their forks). The
    trajectory's lines are verified first — JSON, shapes, step order, the checkpoint count and
    digest of its ``trajectory_end`` line — so a truncated or altered trajectory writes nothing.
    It is then compared with what is stored under its id: a trajectory key, metadata value, step,
    agent output or feedback that exists with a different value raises ConflictError before
    anything of the trajectory is written (nothing is ever overwritten). What is missing is
    written through the client's validated, idempotent save paths: the trajectory (with its
    lineage: the parent step must exist), its checkpoints in batches of up to 200 steps (one
    transaction each), then its metadata. If a write fails for a trajectory that did not exist
    before, it is deleted again, so it is all or nothing; a trajectory that existed may keep
    what was added before the failure, all of it from the file, and a new import completes it.
    Trajectories before a failing one stay imported.

    Importing the same file twice writes nothing the second time. Returns counts
    ``{"trajectories": {"created", "updated", "unchanged"}, "steps" | "agent_outputs" |
    "environment_feedbacks" | "metadata": {"created", "present"}, "seconds"}``.

    Raises:
        NotFoundError: ``path`` does not exist.
        ValidationError: not an fle-db export, not a regular file, or a malformed record (the
            line is named; a step, output or feedback naming another trajectory or step than
            its line's is one).
        SchemaVersionError: the file's format version is not one this fle-db reads.
        DataIntegrityError: truncated file, a line that is not JSON, or a trajectory whose
            digest or checkpoint count does not match (tampered or corrupted).
        ConflictError: the file disagrees with stored data (see above).
        NotFoundError: a fork's parent step is neither in the database nor earlier in the file.
    """
    started = time.perf_counter()
    counts: dict[str, Any] = {"trajectories": {"created": 0, "updated": 0, "unchanged": 0}}
    for table in ("steps", "agent_outputs", "environment_feedbacks", "metadata"):
        counts[table] = {"created": 0, "present": 0}
    done = 0
    with _open_regular(path) as raw:
        lines = _numbered_lines(raw, client.settings.max_payload_bytes)
        first = next(lines, None)
        if first is None:
            raise ValidationError(f"{os.fspath(path)!r} is empty: not an fle-db export")
        _check_header(_parse(first[1], first[0]))
        block: _Block | None = None
        ended = False
        for number, data in lines:
            if ended:
                raise ValidationError(f"line {number}: data after the end of the export")
            with codec.gc_paused():
                record = _parse(data, number)
            kind = record.get("kind")
            if kind == "trajectory":
                if block is not None:
                    raise DataIntegrityError(
                        f"line {number}: trajectory {block.trajectory['id']!r} (line {block.first_line}) has no "
                        "trajectory_end line: the file is corrupted"
                    )
                block = _start_block(record, number)
                block.digest.update(data)
            elif kind == "checkpoint":
                if block is None:
                    raise ValidationError(f"line {number}: a checkpoint outside a trajectory")
                _check_checkpoint(record, block, number)
                block.digest.update(data)
                block.add(data)
            elif kind == "trajectory_end":
                if block is None:
                    raise ValidationError(f"line {number}: trajectory_end outside a trajectory")
                _check_end(record, block, number)
                with block.spool, codec.gc_paused():
                    _import_trajectory(client, block, counts)
                block = None
                done += 1
                if progress is not None:
                    progress(done, raw.tell())
            elif kind == "end":
                if block is not None:
                    raise DataIntegrityError(
                        f"line {number}: the export ends inside trajectory {block.trajectory['id']!r}"
                    )
                if record.get("trajectories") != done:
                    raise DataIntegrityError(
                        f"line {number}: the export says it holds {record.get('trajectories')!r} trajectories, "
                        f"but {done} were read: the file is corrupted"
                    )
                ended = True
            else:
                raise ValidationError(f"line {number}: unknown record kind {kind!r}")
        if not ended:
            where = f" inside trajectory {block.trajectory['id']!r}, which was not imported" if block else ""
            raise DataIntegrityError(
                f"{os.fspath(path)!r} is truncated: it ends{where} without its end line "
                f"({done} complete trajectories before the cut were imported)"
            )
    counts["seconds"] = round(time.perf_counter() - started, 3)
    log.info("imported %s from %s", counts, os.fspath(path))
    return counts


def _open_regular(path: Any) -> IO[bytes]:
    """``path`` opened for reading, if it is a regular file (a FIFO would block forever).

    Raises:
        NotFoundError: no such file. ValidationError: not a path, or not a regular file.
    """
    path = checked_path(path, "the import path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO must not wait for a writer
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValidationError(f"{os.fspath(path)!r} is not a regular file")
        os.set_blocking(fd, True)
        raw = os.fdopen(fd, "rb")
    except FileNotFoundError:
        raise NotFoundError(f"there is no file {os.fspath(path)!r} to import") from None
    except OSError as exc:
        raise ValidationError(f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None
    return raw


def _numbered_lines(raw: IO[bytes], max_payload_bytes: int) -> Iterator[tuple[int, bytes]]:
    """The file's lines (decompressed when it is zstd), numbered from 1; a line longer than a
    checkpoint could be is refused rather than read into memory."""
    stream: IO[bytes] = raw
    if raw.read(4) == _ZSTD_MAGIC:
        raw.seek(0)
        stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=False))
    else:
        raw.seek(0)
    limit = 4 * max_payload_bytes + 1024 * 1024
    number = 0
    while True:
        try:
            data = stream.readline(limit + 1)
        except zstandard.ZstdError as exc:
            raise DataIntegrityError(
                f"line {number + 1}: the compressed file is corrupted or truncated: {exc}"
            ) from exc
        if not data:
            return
        number += 1
        if len(data) > limit:
            raise ValidationError(f"line {number} is longer than {limit:,} bytes: not a checkpoint of this database")
        if not data.endswith(b"\n"):
            raise DataIntegrityError(f"line {number} is cut off (no end of line): the file is truncated")
        yield number, data


def _parse(data: bytes, number: int) -> dict[str, Any]:
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DataIntegrityError(f"line {number} is not valid JSON (corrupted file?): {exc}") from None
    if not isinstance(record, dict):
        raise ValidationError(f"line {number} is not a JSON object")
    return record


def _check_header(header: dict[str, Any]) -> None:
    if header.get("kind") != "header" or header.get("format") != FORMAT_NAME:
        raise ValidationError(
            f"not an fle-db export: the first line must be a {FORMAT_NAME!r} header "
            "(chat and parquet exports cannot be imported)"
        )
    if header.get("version") != FORMAT_VERSION:
        raise SchemaVersionError(
            f"export format version {header.get('version')!r} (written by fle-db "
            f"{header.get('fle_db_version')!r}) is not one this fle-db reads ({FORMAT_VERSION}); upgrade fle-db"
        )


def _start_block(record: dict[str, Any], number: int) -> _Block:
    trajectory, metadata = record.get("trajectory"), record.get("metadata")
    if not isinstance(trajectory, dict) or not isinstance(trajectory.get("id"), str):
        raise ValidationError(f"line {number}: a trajectory line needs a trajectory object with an id")
    if not isinstance(metadata, dict):
        raise ValidationError(f"line {number}: a trajectory line needs a metadata object")
    return _Block(trajectory, metadata, number)


def _check_checkpoint(record: dict[str, Any], block: _Block, number: int) -> None:
    tid, step_number = record.get("trajectory_id"), record.get("step_number")
    if tid != block.trajectory["id"]:
        raise ValidationError(f"line {number}: checkpoint of {tid!r} inside trajectory {block.trajectory['id']!r}")
    if type(step_number) is not int or step_number <= block.last_step:
        raise ValidationError(f"line {number}: step_number {step_number!r} is not an integer after {block.last_step}")
    block.last_step = step_number
    for name in (*_RECORDS, "game_state"):
        value = record.get(name)
        if value is not None and not isinstance(value, dict):
            raise ValidationError(f"line {number}: {name} must be an object or null")
        # A record is written under its own keys: they must be the line's, or a line of
        # trajectory A would write into trajectory B (outside the unit that is rolled back).
        if value is not None and name != "game_state":
            named = (value.get("trajectory_id"), value.get("step_number"))
            if named != (tid, step_number) or type(named[1]) is not int:
                raise ValidationError(
                    f"line {number}: the {name} names trajectory {named[0]!r:.80} step {named[1]!r:.40}, "
                    f"not this line's {tid!r} step {step_number}"
                )
    if record.get("game_state") is not None and record.get("step") is None:
        raise ValidationError(f"line {number}: a game state without its step")
    parts = frozenset(name for name in _RECORDS if record.get(name) is not None)
    if not parts:
        raise ValidationError(f"line {number}: an empty checkpoint")
    block.parts.append(parts)


def _check_end(record: dict[str, Any], block: _Block, number: int) -> None:
    tid = block.trajectory["id"]
    if record.get("trajectory_id") != tid:
        raise ValidationError(f"line {number}: trajectory_end of {record.get('trajectory_id')!r} inside {tid!r}")
    if record.get("checkpoints") != len(block.ends) or record.get("digest") != block.digest.hexdigest():
        raise DataIntegrityError(
            f"trajectory {tid!r} (lines {block.first_line}-{number}) does not match its digest or checkpoint "
            "count: the file was altered or corrupted; nothing of this trajectory was imported"
        )


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON, types included (``1`` is not ``1.0``, ``True`` is not ``1``)."""
    return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)


def _import_trajectory(client: DatabaseClient, block: _Block, counts: dict[str, Any]) -> None:
    """Compare one verified trajectory with the database, then write what is missing."""
    tid = block.trajectory["id"]
    try:
        stored_trajectory: dict[str, Any] | None = client.load_trajectory(tid)
    except NotFoundError:
        stored_trajectory = None
    stored_metadata: dict[str, Any] = {}
    stored: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in _RECORDS}
    if stored_trajectory is not None:
        _check_same(f"trajectory {tid!r}", stored_trajectory, block.trajectory)
        stored_metadata = client.load_metadata(tid)
        _check_same(f"metadata of trajectory {tid!r}", stored_metadata, block.metadata)
        stored["step"] = {r["step_number"]: r for r in client.load_steps(tid)}
        stored["agent_output"] = {r["step_number"]: r for r in client.load_agent_outputs(tid)}
        stored["environment_feedback"] = {r["step_number"]: r for r in client.load_environment_feedbacks(tid)}
    # Every stored record must equal the file's before anything is written; collect what is new.
    new: list[tuple[int, frozenset[str]]] = []
    for index, parts in enumerate(block.parts):
        missing = parts
        if stored_trajectory is not None:
            record = orjson.loads(block.line(index))
            number = record["step_number"]
            for name in parts:
                held = stored[name].get(number)
                if held is not None and not _same(held, record[name]):
                    raise ConflictError(
                        f"{name.replace('_', ' ')} {number} of trajectory {tid!r} is stored with different "
                        "content than the file holds; nothing of this trajectory was imported"
                    )
            missing = frozenset(name for name in parts if number not in stored[name])
        if missing:
            new.append((index, missing))
    new_keys = stored_trajectory is None or any(k not in stored_trajectory for k in block.trajectory)
    new_metadata = {k: v for k, v in block.metadata.items() if k not in stored_metadata}
    try:
        if new_keys:
            client.save_trajectory(block.trajectory)
        _write_checkpoints(client, block, new)
        for key, value in new_metadata.items():
            client.save_metadata(tid, key, value)
    except BaseException:
        if stored_trajectory is None:
            _undo(client, tid)
        raise
    changed = new_keys or new or new_metadata
    counts["trajectories"]["created" if stored_trajectory is None else "updated" if changed else "unchanged"] += 1
    for name in _RECORDS:
        created = sum(1 for _, missing in new if name in missing)
        counts[f"{name}s"]["created"] += created
        counts[f"{name}s"]["present"] += sum(1 for parts in block.parts if name in parts) - created
    counts["metadata"]["created"] += len(new_metadata)
    counts["metadata"]["present"] += len(block.metadata) - len(new_metadata)


def _check_same(what: str, stored: dict[str, Any], given: dict[str, Any]) -> None:
    differing = [key for key in given if key in stored and not _same(stored[key], given[key])]
    if differing:
        raise ConflictError(
            f"{what} is stored with different values for {', '.join(map(repr, differing[:10]))}; "
            "import never overwrites: nothing of this trajectory was imported"
        )


def _write_checkpoints(client: DatabaseClient, block: _Block, new: list[tuple[int, frozenset[str]]]) -> None:
    """Write the new parts of the checkpoints in batches (one transaction each) of at most
    ``max_payload_bytes`` of lines (and 32 MiB), so memory stays bounded by the payload limit."""
    batch_bytes = min(_IMPORT_BATCH_BYTES, client.settings.max_payload_bytes)
    batch: list[dict[str, Any]] = []
    size = 0
    for index, missing in new:
        data = block.line(index)
        record = orjson.loads(data)
        if record.get("step") is None:  # an output or feedback saved without its step
            if "agent_output" in missing:
                client.save_agent_output(record["agent_output"])
            if "environment_feedback" in missing:
                client.save_environment_feedback(record["environment_feedback"])
            continue
        element = {k: v for k, v in record["step"].items() if k != "game_state_id"}
        for name in ("agent_output", "environment_feedback", "game_state"):
            if record.get(name) is not None:
                element[name] = record[name]
        batch.append(element)
        size += len(data)
        if len(batch) >= _IMPORT_BATCH_STEPS or size >= batch_bytes:
            client.batch_save_steps(batch)
            batch, size = [], 0
    if batch:
        client.batch_save_steps(batch)


def _undo(client: DatabaseClient, tid: str) -> None:
    """Remove a trajectory this import created before failing (all or nothing for new ones)."""
    try:
        client.delete_trajectory(tid)
    except NotFoundError:
        pass
    except Exception:
        log.exception("import failed for new trajectory %r and removing its partial rows failed too", tid)


__all__ = ["FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "export_data", "import_data", "instant_us"]
