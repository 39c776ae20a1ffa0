"""Records: public dicts to encoded rows and back, and the keyframe-retry protocol of writes.

:class:`Records` holds one client's storage engine (its :class:`~.engine.StateEncoder` with the
keyframes it remembers, its :class:`~.engine.BlobCache` and decoder). It validates and encodes
trajectories (merged with what is stored) and checkpoints (step, agent output, environment
feedback, game state) into the rows a backend
stores, decodes stored rows into the dicts the client returns, and runs writes through
:meth:`Records.write`: a delta may name a keyframe this process remembers but another process
deleted since; such a write fails on the foreign key, and is written once more, whole.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import orjson
import pydantic

from .. import models
from ..backends.base import (
    Blob,
    Checkpoint,
    NodeRow,
    SaveResult,
    StepRow,
    StoredCheckpoint,
    StoredState,
    StoredStep,
    TrajectoryRow,
)
from ..errors import DataIntegrityError, DependencyError, MissingReferenceError, StateThinnedError, ValidationError
from ..validation import as_dict, validated
from . import codec
from .engine import BlobCache, EncodedRecord, PendingBases, StateDecoder, StateEncoder
from .thinning import is_thinned

T = TypeVar("T")
M = TypeVar("M", bound=pydantic.BaseModel)

#: The parts of a checkpoint besides its step, as entries of a step or keyword arguments.
ENTRIES = ("agent_output", "environment_feedback", "game_state")
STEP_KEYS = ("trajectory_id", "step_number")
_PARTS = (
    ("agent_output", models.AgentOutput, "agent_outputs"),
    ("environment_feedback", models.EnvironmentFeedback, "environment_feedbacks"),
)


class Records:
    """Encodes and decodes one client's records. Thread-safe (the engine's memories are locked)."""

    def __init__(self, max_payload_bytes: int, cache_max_bytes: int) -> None:
        self.max_payload_bytes = max_payload_bytes
        self.encoder = StateEncoder(max_payload_bytes)
        self.cache = BlobCache(cache_max_bytes)
        self.decoder = StateDecoder(self.cache)

    # -- writes -----------------------------------------------------------------------------
    def write(self, attempt: Callable[[PendingBases], T]) -> T:
        """Run ``attempt`` (encode with the given pending keyframes, then write in one
        transaction) and adopt the keyframes it cut once it committed.

        If it fails with MissingReferenceError after a delta named a keyframe remembered from an
        earlier write (another process may have deleted that base meanwhile), the remembered
        keyframes are forgotten and ``attempt`` runs once more, writing whole records. A content
        conflict (ConflictError) is never retried: it would fail the same way.
        """
        pending = PendingBases()
        try:
            result = attempt(pending)
        except MissingReferenceError:
            if not pending.rebased:
                raise
            self.encoder.forget()
            pending = PendingBases()
            result = attempt(pending)
        self.encoder.committed(pending)
        return result

    def trajectory(
        self, trajectory: Mapping[str, Any] | models.Trajectory, defaults: Mapping[str, Any] | None = None
    ) -> tuple[str, Callable[[tuple[str, bytes]], TrajectoryRow]]:
        """Validate a trajectory to save (its keys encodable, checked now) and return its id and
        the builder of its row from the stored ``(codec, body)`` it merges into; ``defaults``
        (a fork's inherited keys) fill the keys neither the trajectory nor the stored row has.

        Raises:
            ValidationError / PayloadTooLargeError: now. DependencyError: from the builder, when
            the lineage would change.
        """
        record = validated(models.Trajectory, dict(as_dict(trajectory, "trajectory")), "trajectory")
        trajectory_id: str = record["id"]
        fields = {k: v for k, v in record.items() if k != "id"}
        what = f"trajectory {trajectory_id!r}"
        self.value(fields, what)  # reject bad input before the transaction

        def build(stored: tuple[str, bytes]) -> TrajectoryRow:
            old = codec.load(*stored)
            for key in ("parent_trajectory_id", "parent_step_number"):
                if old.get(key) is not None and key in fields and fields[key] != old[key]:
                    raise DependencyError(
                        f"trajectory {trajectory_id!r} was forked from {old.get('parent_trajectory_id')!r} "
                        f"step {old.get('parent_step_number')}; its lineage cannot change"
                    )
            merged = {**(defaults or {}), **old, **fields}
            reward = merged.get("total_reward")
            return TrajectoryRow(
                id=trajectory_id,
                body=self.value(merged, what),
                agent_type=merged.get("agent_type"),
                task=merged.get("task"),
                total_reward=float(reward) if reward is not None else None,
                success=merged.get("success"),
                parent_trajectory_id=merged.get("parent_trajectory_id"),
                parent_step_number=merged.get("parent_step_number"),
            )

        return trajectory_id, build

    def value(self, value: Any, what: str) -> Blob:
        """A JSON value (trajectory body, metadata value) as a tagged, compressed blob."""
        raw = codec.canonical_json(value, what, self.max_payload_bytes)
        tag, body = codec.pack(raw)
        return Blob(tag, body, codec.digest(raw))

    def checkpoint(
        self,
        step: Mapping[str, Any] | models.Step,
        agent_output: Mapping[str, Any] | None,
        environment_feedback: Mapping[str, Any] | None,
        game_state: Mapping[str, Any] | None,
        pending: PendingBases,
        node: NodeRow | None = None,
    ) -> Checkpoint:
        """Validate and encode one checkpoint; its parts come as arguments or as entries of
        ``step`` (not both). Raises ValidationError / PayloadTooLargeError; writes nothing."""
        given = {"agent_output": agent_output, "environment_feedback": environment_feedback, "game_state": game_state}
        record = dict(as_dict(step, "step"))
        for name in ENTRIES:
            if name in record:
                if given[name] is not None:
                    raise ValidationError(f"step: {name} was given both as an entry and as an argument")
                given[name] = record.pop(name)
        record = validated(models.Step, record, "step")
        tid, number = record["trajectory_id"], record["step_number"]
        what = f"step {number} of trajectory {tid!r}"
        reward = record.get("reward")
        parent_step = record.get("parent_step_number")
        step_row = StepRow(
            body=self.encoder.encode_record("steps", tid, number, body(record), what, pending),
            reward=float(reward) if reward is not None else None,
            parent_trajectory_id=record.get("parent_trajectory_id") or (tid if parent_step is not None else None),
            parent_step_number=parent_step,
        )
        parts: dict[str, EncodedRecord | None] = {}
        for name, model, kind in _PARTS:
            part = given[name]
            if part is None:
                parts[name] = None
                continue
            rec = dict(as_dict(part, name))
            for key, value in zip(STEP_KEYS, (tid, number), strict=True):
                if rec.setdefault(key, value) != value:
                    raise ValidationError(f"{what}: {name}[{key!r}] is {rec[key]!r}, not {value!r}")
            parts[name] = self.encoder.encode_record(
                kind, tid, number, body(validated(model, rec, name)), f"{name} of {what}", pending
            )
        state = given["game_state"]
        return Checkpoint(
            tid,
            number,
            step=step_row,
            agent_output=parts["agent_output"],
            environment_feedback=parts["environment_feedback"],
            game_state=self.encoder.encode(state, f"game_state of {what}", tid, pending) if state is not None else None,
            node=node,
        )

    def step_part(self, part: str, model: type[M], record: Any) -> Callable[[PendingBases], list[Checkpoint]]:
        """A builder of the checkpoint holding only a standalone agent output or environment
        feedback (``part``), validated now."""
        data = validated(model, dict(as_dict(record, part)), part)
        tid, number = data["trajectory_id"], data["step_number"]

        def build(pending: PendingBases) -> list[Checkpoint]:
            encoded = self.encoder.encode_record(part + "s", tid, number, body(data), part, pending)
            if part == "agent_output":
                return [Checkpoint(tid, number, agent_output=encoded)]
            return [Checkpoint(tid, number, environment_feedback=encoded)]

        return build

    # -- reads ------------------------------------------------------------------------------
    def load(self, codec_tag: str, body: bytes) -> Any:
        """A stored JSON value (trajectory body, metadata value). Raises DataIntegrityError."""
        return codec.load(codec_tag, body)

    def values(self, rows: list[StoredStep]) -> list[Any]:
        """The decoded values of step-scoped rows of one trajectory and table."""
        return decode_records(self.decoder, rows)

    def steps(self, rows: list[StoredStep]) -> list[dict[str, Any]]:
        """Stored step rows as the dicts ``load_step(s)`` return: the step as saved plus its
        ``game_state_id``."""
        return [
            {"trajectory_id": row.trajectory_id, "step_number": row.step_number, **value,
             "game_state_id": row.game_state_id}
            for row, value in zip(rows, self.values(rows), strict=True)
        ]  # fmt: skip

    def checkpoint_dict(self, found: StoredCheckpoint) -> dict[str, Any]:
        """A stored checkpoint as ``load_checkpoint`` returns it: ``{"step", "agent_output",
        "environment_feedback", "game_state"}``, absent parts None."""
        output, feedback = (self.values([r])[0] if r is not None else None
                            for r in (found.agent_output, found.environment_feedback))  # fmt: skip
        state = self.state(found.game_state) if found.game_state is not None else None
        return {
            "step": self.steps([found.step])[0],
            "agent_output": output,
            "environment_feedback": feedback,
            "game_state": state,
        }

    def step_records(self, rows: list[StoredStep]) -> list[dict[str, Any]]:
        """Stored agent outputs or feedbacks as the dicts their loaders return."""
        return [
            {"trajectory_id": row.trajectory_id, "step_number": row.step_number, **value}
            for row, value in zip(rows, self.values(rows), strict=True)
        ]

    def state(self, stored: StoredState) -> dict[str, Any]:
        """A stored game state, decoded and verified. Raises StateThinnedError for a state
        :meth:`~fle_db.DatabaseClient.thin` dropped, DataIntegrityError for corrupt bytes."""
        if is_thinned(stored.codec, stored.body, len(stored.parts)):
            raise StateThinnedError(
                f"game state {stored.id} was thinned (fle-db thin / retention): its steps keep their records; "
                "save or import the original checkpoint to restore it, or restore_to an instant before the thinning"
            )
        state: dict[str, Any] = self.decoder.state(stored.id, stored.codec, stored.body, stored.parts)
        return state

    def states(self, stored: Iterable[StoredState], skip_thinned: bool = False) -> dict[str, dict[str, Any]]:
        """Stored game states by id; parts shared between them are decoded once. Thinned states
        raise StateThinnedError, or with ``skip_thinned`` are left out."""
        with codec.gc_paused():
            return {
                state.id: self.state(state)
                for state in stored
                if not (skip_thinned and is_thinned(state.codec, state.body, len(state.parts)))
            }


def decode_records(decoder: StateDecoder, rows: list[StoredStep]) -> list[Any]:
    """Decode step-scoped rows of one trajectory and table (see :func:`iter_records`).

    Raises:
        DataIntegrityError: a delta's keyframe is missing, or stored bytes are corrupt.
    """
    with codec.gc_paused():
        return list(iter_records(decoder, rows))


def iter_records(decoder: StateDecoder, rows: list[StoredStep]) -> Iterator[Any]:
    """Decode step-scoped rows of one trajectory and table, one at a time as iterated; a
    delta's keyframe is either in ``rows`` (whole-trajectory loads) or attached to the row
    (resume, export pages). A keyframe's raw bytes are kept only while a later row needs them.

    Raises:
        DataIntegrityError: a delta's keyframe is missing, or stored bytes are corrupt.
    """
    by_number = {row.step_number: row for row in rows}
    uses = Counter(row.base_step_number for row in rows if row.base_step_number is not None)
    raw: dict[int, bytes] = {}
    for row in rows:
        value = orjson.loads(_record_raw(decoder, row, by_number, raw, uses))
        if row.base_step_number is not None:
            uses[row.base_step_number] -= 1
            if not uses[row.base_step_number]:
                raw.pop(row.base_step_number, None)
        yield value


def _record_raw(
    decoder: StateDecoder, row: StoredStep, by_number: dict[int, StoredStep], raw: dict[int, bytes], uses: Counter[int]
) -> bytes:
    """The verified raw bytes of ``row``, kept in ``raw`` while ``uses`` counts later deltas of
    it. (A function, not a recursive closure: that would be a reference cycle holding every row
    until the cyclic collector runs, which export pauses.)"""
    got = raw.get(row.step_number)
    if got is None:
        base = None
        if row.base_step_number is not None:
            base_row = row.base or by_number.get(row.base_step_number)
            if base_row is None:
                raise DataIntegrityError(
                    f"record {row.step_number} of {row.trajectory_id!r} is a delta of missing "
                    f"record {row.base_step_number}"
                )
            base = _record_raw(decoder, base_row, by_number, raw, uses)
        got = decoder.record(row.codec, row.body, row.digest, base)
        if uses[row.step_number]:
            raw[row.step_number] = got
    return got


def body(record: Mapping[str, Any]) -> dict[str, Any]:
    """The keys stored in the payload: all but the key columns."""
    return {k: v for k, v in record.items() if k not in STEP_KEYS}


def ids(result: SaveResult) -> dict[str, Any]:
    """What a save returns: ``{"trajectory_id", "step_number", "game_state_id", "created"}``."""
    return {
        "trajectory_id": result.trajectory_id,
        "step_number": result.step_number,
        "game_state_id": result.game_state_id,
        "created": result.created,
    }
