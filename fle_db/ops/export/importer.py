"""Import of ``jsonl`` exports (see :mod:`fle_db.ops.export.jsonl` for the format).

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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import orjson
import zstandard

from ...errors import ConflictError, DataIntegrityError, NotFoundError, SchemaVersionError, ValidationError
from ...storage import codec
from ..files import checked_path
from .jsonl import FORMAT_NAME, FORMAT_VERSION

if TYPE_CHECKING:
    from ...client import DatabaseClient

log = logging.getLogger("fle_db")

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_IMPORT_BATCH_STEPS = 200
_IMPORT_BATCH_BYTES = 32 * 1024 * 1024
_RECORDS = ("step", "agent_output", "environment_feedback")
#: ``progress(trajectories_done, file_bytes_done)``.
Progress = Callable[[int, int], None]


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

    A stored step whose game state was thinned (:meth:`~fle_db.DatabaseClient.thin`) gets the
    file's state back when it has the step's ``game_state_id`` (counted in
    ``game_states_restored``; a trajectory that changed no other way stays ``unchanged``).

    Importing the same file twice writes nothing the second time. Returns counts
    ``{"trajectories": {"created", "updated", "unchanged"}, "steps" | "agent_outputs" |
    "environment_feedbacks" | "metadata": {"created", "present"}, "game_states_restored",
    "seconds"}``.

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
    counts["game_states_restored"] = 0
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
    states: dict[str, int] = {}  # state id of a stored step -> the line holding that state
    for index, parts in enumerate(block.parts):
        missing = parts
        if stored_trajectory is not None:
            record = orjson.loads(block.line(index))
            number = record["step_number"]
            held_step = stored["step"].get(number)
            if held_step is not None and held_step["game_state_id"] and record.get("game_state") is not None:
                states.setdefault(held_step["game_state_id"], index)
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
        counts["game_states_restored"] += _restore_thinned(client, block, states)
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


def _restore_thinned(client: DatabaseClient, block: _Block, states: dict[str, int]) -> int:
    """Save again the file's states of stored steps whose state was thinned; returns how many."""
    restored = 0
    for state_id in client._backend.thinned_states(list(states)):
        state = orjson.loads(block.line(states[state_id]))["game_state"]
        if client.save_game_state(state) != state_id:
            raise ConflictError(
                f"the file's game state for {block.trajectory['id']!r} is not the stored step's state {state_id}"
            )
        restored += 1
    return restored


def _undo(client: DatabaseClient, tid: str) -> None:
    """Remove a trajectory this import created before failing (all or nothing for new ones)."""
    try:
        client.delete_trajectory(tid)
    except NotFoundError:
        pass
    except Exception:
        log.exception("import failed for new trajectory %r and removing its partial rows failed too", tid)


__all__ = ["import_data"]
