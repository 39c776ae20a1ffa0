"""Game-state storage engine: content-addressed parts, zstd, bounded deltas, checksums, a cache.

A game state (a JSON object) is split into **parts**: every top-level key whose canonical JSON is
at least :data:`PART_MIN_BYTES` (FLE's ~51 KB research tree) becomes a part of its own, and all
the smaller keys together form the ``rest`` part. Each part is a **blob**, addressed by the
blake2b-128 digest of its canonical JSON, so a part that did not change since the last step (the
research tree, most steps) is stored once and only referenced again. The state's own id is the
digest of its manifest (part keys and blob ids), so equal states still get equal ids.

A blob is zstd-compressed, either alone (a *keyframe*) or with the raw bytes of an earlier blob of
the same part of the same trajectory as zstd dictionary (a *delta*). A delta's base is always a
keyframe, so decoding any state touches at most two blobs per part; a new keyframe is cut after
:data:`KEYFRAME_INTERVAL` values, and a value whose delta would not be at most half its size is
stored plain.

Every blob carries its codec tag and a CRC-32 of its stored bytes, checked before decoding;
zstd's content checksum is checked while decoding, and the digest of the decoded bytes must equal
the blob id. Any mismatch raises :class:`~fle_db.errors.DataIntegrityError`: the store never
returns wrong data.

Decoded blobs (immutable bytes) are kept in a bounded LRU (:class:`BlobCache`), so the research
tree shared by consecutive states is decompressed once. Only immutable, content-addressed data is
cached; nothing mutable is, and nothing is shared across processes.
"""

from __future__ import annotations

import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import zstandard

from ..errors import DataIntegrityError, ValidationError
from . import codec

#: Top-level keys of at least this many bytes of JSON are stored as parts of their own.
PART_MIN_BYTES = 4096
#: Part keys longer than this stay in the ``rest`` part (the key column is 200 characters).
PART_KEY_MAX = 190
#: The part holding every small top-level key.
REST = "rest"
#: Deltas per keyframe: bounds how far a delta's content may drift from its base.
KEYFRAME_INTERVAL = 32
#: A delta larger than this fraction of its raw size is not worth it: store the value plain.
DELTA_MAX_RATIO = 0.5
#: After this many deltas in a row that did not pay, stop trying until the next keyframe.
DELTA_MAX_MISSES = 3
CODEC_ZSTD = "zstd"
CODEC_ZSTD_DELTA = "zstd+delta"
CODEC_MANIFEST = "manifest"
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class BlobRow:
    """A blob to store: ``base_id`` names the keyframe whose bytes are the zstd dictionary."""

    id: str
    codec: str
    body: bytes
    raw_size: int
    checksum: int
    base_id: str | None = None


@dataclass(frozen=True, slots=True)
class EncodedState:
    """A game state ready to store: its id, ``(part key, blob id)`` pairs and the blobs."""

    id: str
    raw_size: int
    parts: tuple[tuple[str, str], ...]
    blobs: tuple[BlobRow, ...]


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A blob as read back; ``base`` is its keyframe, if it is a delta."""

    id: str
    codec: str
    body: bytes
    checksum: int
    base: StoredBlob | None = None


def manifest_id(parts: Iterable[tuple[str, str]]) -> str:
    """A state's id: the digest of its sorted ``(part key, blob id)`` pairs."""
    return codec.digest(orjson.dumps(sorted(parts)))


@dataclass(slots=True)
class _Keyframe:
    ref: str | int  # the base's blob id, or the base record's step number
    compressor: zstandard.ZstdCompressor
    uses: int = 0
    misses: int = 0  # consecutive deltas that did not pay


@dataclass(slots=True)
class PendingBases:
    """Keyframes cut and parts written while encoding one write; :meth:`StateEncoder.committed`
    adopts them. ``rebased``: this write names a keyframe or a part blob remembered from an
    earlier write (which another process may have deleted since)."""

    keyframes: dict[tuple[str, str], _Keyframe] = field(default_factory=dict)
    written: dict[tuple[str, str], str] = field(default_factory=dict)
    rebased: bool = False


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """A step, agent output or feedback ready to store; ``base`` is its keyframe's step number."""

    codec: str
    body: bytes
    digest: str
    base: int | None = None


class StateEncoder:
    """Encodes game states and step records of many trajectories, remembering per trajectory and
    part key (or record table):

    * the current keyframe (deltas are compressed against it), adopted only after the write
      that stored it committed, so a delta never names a base that was rolled back;
    * the last large part it validated (its JSON text with the keys unsorted, and its digest): a
      part whose text is identical to it, such as an unchanged research tree, skips the sorted
      dump, the decode-and-compare proof and the re-hash. The only
      values that could slip through are lossy swaps at the very same spot (None→NaN,
      list→tuple, str→UUID or Enum), which would store the previous, valid value;
    * the blob id of each part it last stored (adopted after the commit, like keyframes): a part
      whose digest equals it is only referenced, neither compressed nor sent again (an unchanged
      51 KB research tree cost a ~70 us zstd call per step, whose blob row the database then
      ignored). If another process deleted that blob since, the write fails on the foreign key
      and :meth:`~fle_db.storage.records.Records.write` writes it once more, whole.

    The memories are optimisations bounded to ``2 * max_trajectories`` slots (measured: the
    full 128 keyframe slots, each a zstd context with a digested dictionary, add ~35 MB of RSS);
    a process that has none simply writes keyframes and every part. Thread-safe.
    """

    def __init__(self, max_payload_bytes: int, max_trajectories: int = 64) -> None:
        self._max_payload = max_payload_bytes
        self._max_slots = max_trajectories * 2
        self._keyframes: OrderedDict[tuple[str, str], _Keyframe] = OrderedDict()
        self._validated: OrderedDict[tuple[str, str], tuple[bytes, str]] = OrderedDict()
        self._written: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._lock = threading.Lock()

    def encode(
        self, state: Mapping[str, Any], what: str, trajectory_id: str | None, pending: PendingBases
    ) -> EncodedState:
        """Validate and encode one state. Raises ValidationError / PayloadTooLargeError."""
        if not isinstance(state, Mapping):
            raise ValidationError(f"{what} must be a JSON object (dict), got {type(state).__name__}")
        rest: dict[str, Any] = {}
        # (key, canonical bytes, digest, value); bytes None: an unchanged part, dumped only if needed.
        split: list[tuple[str, bytes | None, str, Any]] = []
        total = 2
        for key, value in state.items():
            if type(key) is not str:
                raise ValidationError(f"{what} has a non-string key {key!r}; JSON object keys are strings")
            # Unsorted: only the size is needed here, and sorting the keys of a 51 KB research
            # tree is ~40 % of its dump (sorting keeps the length).
            plain = codec.dumps(value, f"{what}[{key!r}]", self._max_payload, sort_keys=False)
            total += len(plain) + len(key) + 4
            if len(plain) >= PART_MIN_BYTES and len(key) <= PART_KEY_MAX and key != REST:
                split.append((key, *self._large_part(trajectory_id, key, plain, value, what), value))
            else:
                rest[key] = value
        if total > self._max_payload:
            codec.dumps(state, what, self._max_payload)  # raises PayloadTooLargeError
        if rest or not split:
            raw = codec.canonical_json(rest, what, self._max_payload)
            split.append((REST, raw, codec.digest(raw), rest))
        parts: list[tuple[str, str]] = []
        blobs: list[BlobRow] = []
        for key, part_raw, blob_id, value in split:
            parts.append((key, blob_id))
            slot = (trajectory_id or "", key)
            if trajectory_id is not None:
                if pending.written.get(slot) == blob_id:  # stored by this write already
                    continue
                with self._lock:
                    remembered = self._written.get(slot) == blob_id
                pending.written[slot] = blob_id
                if remembered:
                    pending.rebased = True
                    continue
            if part_raw is None:  # proven exact before, as these very bytes
                part_raw = codec.dumps(value, f"{what}[{key!r}]", self._max_payload)
            blobs.append(self._blob(slot, part_raw, blob_id, pending))
        parts.sort()
        # Keyframes first: a delta's base must exist when the delta's row is inserted.
        blobs.sort(key=lambda b: b.base_id is not None)
        return EncodedState(manifest_id(parts), total, tuple(parts), tuple(blobs))

    def _large_part(
        self, trajectory_id: str | None, key: str, plain: bytes, value: Any, what: str
    ) -> tuple[bytes | None, str]:
        """``(canonical bytes, digest)`` of a large part whose unsorted JSON is ``plain``, proven
        exact; ``(None, digest)`` without any work when ``plain`` repeats the last part validated
        for this trajectory and key (same text, same key order: the same value)."""
        slot = (trajectory_id or "", key)
        with self._lock:
            last = self._validated.get(slot)
        if last is not None and last[0] == plain:
            return None, last[1]
        raw = codec.dumps(value, f"{what}[{key!r}]", self._max_payload)
        codec.verify_exact(raw, value, f"{what}[{key!r}]")
        digest = codec.digest(raw)
        if trajectory_id is not None:
            with self._lock:
                self._validated[slot] = (plain, digest)
                self._validated.move_to_end(slot)
                while len(self._validated) > self._max_slots:
                    self._validated.popitem(last=False)
        return raw, digest

    def encode_record(
        self, kind: str, trajectory_id: str, step_number: int, value: Any, what: str, pending: PendingBases
    ) -> EncodedRecord:
        """Validate and encode a step-scoped record (the body of a step, output or feedback),
        as a delta against this trajectory's keyframe record of the same ``kind`` when it pays."""
        raw = codec.canonical_json(value, what, self._max_payload)
        if len(raw) < codec.COMPRESS_MIN_BYTES:
            return EncodedRecord(codec.CODEC_JSON, raw, codec.digest(raw))
        tag, body, base = self._compress((trajectory_id, "@" + kind), step_number, raw, pending)
        return EncodedRecord(tag, body, codec.digest(raw), base)  # type: ignore[arg-type]

    def _blob(self, slot: tuple[str, str], raw: bytes, blob_id: str, pending: PendingBases) -> BlobRow:
        tag, body, base = self._compress(slot, blob_id, raw, pending)
        return BlobRow(blob_id, tag, body, len(raw), zlib.crc32(body), base)  # type: ignore[arg-type]

    def _compress(
        self, slot: tuple[str, str], ref: str | int, raw: bytes, pending: PendingBases
    ) -> tuple[str, bytes, str | int | None]:
        """``(codec, body, base ref)``: a delta against the slot's keyframe when that is at most
        half the raw size, else a plain frame that becomes the slot's next keyframe."""
        keyframe = pending.keyframes.get(slot)
        remembered = keyframe is None and bool(slot[0])
        if remembered:
            with self._lock:
                keyframe = self._keyframes.get(slot)
        if keyframe is not None and keyframe.ref != ref:
            due, delta = self._delta(keyframe, raw)
            if delta is not None:
                pending.rebased |= remembered
                return CODEC_ZSTD_DELTA, delta, keyframe.ref
            if due:
                # Incompressible against the keyframe (e.g. a zlib+base64 blob): store it plain and
                # keep the keyframe, rather than cut a new one that would not do better.
                return CODEC_ZSTD, codec.compressor().compress(raw), None
        if slot[0] and (keyframe is None or keyframe.ref != ref):
            pending.keyframes[slot] = _Keyframe(ref, _dict_compressor(raw))
        return CODEC_ZSTD, codec.compressor().compress(raw), None

    def _delta(self, keyframe: _Keyframe, raw: bytes) -> tuple[bool, bytes | None]:
        """``(due, delta)``: whether the keyframe still serves (fewer than
        :data:`KEYFRAME_INTERVAL` uses), and ``raw`` compressed against it if that pays."""
        # Remembered keyframes are shared by every thread of the client: their counters and
        # their zstd context (not thread-safe) change only under the lock.
        with self._lock:
            if keyframe.uses >= KEYFRAME_INTERVAL:
                return False, None
            keyframe.uses += 1
            if keyframe.misses >= DELTA_MAX_MISSES:
                return True, None
            body = keyframe.compressor.compress(raw)
            if len(body) <= DELTA_MAX_RATIO * len(raw):
                keyframe.misses = 0
                return True, body
            keyframe.misses += 1
            return True, None

    def committed(self, pending: PendingBases) -> None:
        """Adopt the keyframes and part blobs of a write that committed."""
        with self._lock:
            _adopt(self._keyframes, pending.keyframes, self._max_slots)
            _adopt(self._written, pending.written, self._max_slots)

    def forget(self) -> None:
        """Drop every remembered keyframe and part blob (after a base went missing, e.g.
        deleted elsewhere)."""
        with self._lock:
            self._keyframes.clear()
            self._written.clear()


def _adopt(memory: OrderedDict[tuple[str, str], V], adopted: Mapping[tuple[str, str], V], max_slots: int) -> None:
    """Remember ``adopted`` as the most recent entries of the LRU ``memory`` of ``max_slots``."""
    for slot, value in adopted.items():
        memory[slot] = value
        memory.move_to_end(slot)
    while len(memory) > max_slots:
        memory.popitem(last=False)


def _dict_compressor(raw: bytes) -> zstandard.ZstdCompressor:
    dictionary = zstandard.ZstdCompressionDict(raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    # Digest the dictionary once (a CDict): without it zstd reloads it on every compress call,
    # which measured ~40 us per delta against a 50 KB keyframe.
    dictionary.precompute_compress(level=codec.ZSTD_LEVEL)
    return zstandard.ZstdCompressor(dict_data=dictionary, write_checksum=True)


class BlobCache:
    """A bounded (bytes) LRU of decoded blob bytes, keyed by blob id, with hit/miss counters.

    Blobs are immutable and content-addressed, so a cached entry can never be stale.
    Thread-safe.
    """

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.hits = 0
        self.misses = 0
        self._size = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, blob_id: str) -> bytes | None:
        with self._lock:
            raw = self._entries.get(blob_id)
            if raw is None:
                self.misses += 1
                return None
            self._entries.move_to_end(blob_id)
            self.hits += 1
            return raw

    def put(self, blob_id: str, raw: bytes) -> None:
        if len(raw) > self.max_bytes // 4:
            return
        with self._lock:
            if blob_id in self._entries:
                return
            self._entries[blob_id] = raw
            self._size += len(raw)
            while self._size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self._size -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._size = 0

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "entries": len(self._entries),
                "bytes": self._size,
                "max_bytes": self.max_bytes,
            }


class StateDecoder:
    """Decodes stored blobs and states, verifying every checksum, through a :class:`BlobCache`."""

    def __init__(self, cache: BlobCache) -> None:
        self.cache = cache

    def blob_bytes(self, blob: StoredBlob) -> bytes:
        """The verified raw (canonical JSON) bytes of a blob. Raises DataIntegrityError."""
        raw = self.cache.get(blob.id)
        if raw is not None:
            return raw
        if zlib.crc32(blob.body) != blob.checksum:
            raise DataIntegrityError(f"blob {blob.id} failed its CRC-32 check: the stored bytes are corrupt")
        try:
            if blob.codec == CODEC_ZSTD:
                raw = codec.decompressor().decompress(blob.body)
            elif blob.codec == CODEC_ZSTD_DELTA:
                if blob.base is None:
                    raise DataIntegrityError(f"blob {blob.id} is a delta but its base is missing")
                base = zstandard.ZstdCompressionDict(
                    self.blob_bytes(blob.base), dict_type=zstandard.DICT_TYPE_RAWCONTENT
                )
                raw = zstandard.ZstdDecompressor(dict_data=base).decompress(blob.body)
            else:
                raise DataIntegrityError(f"blob {blob.id} has unknown codec {blob.codec!r}: written by a newer fle-db?")
        except zstandard.ZstdError as exc:
            raise DataIntegrityError(f"blob {blob.id} failed to decompress: {exc}") from exc
        if codec.digest(raw) != blob.id:
            raise DataIntegrityError(f"blob {blob.id} decoded to bytes of another digest: corrupt")
        self.cache.put(blob.id, raw)
        return raw

    def record(self, codec_tag: str, body: bytes, digest: str, base: bytes | None) -> bytes:
        """Verified raw bytes of a step-scoped record; ``base`` is its keyframe's raw bytes."""
        if codec_tag in (codec.CODEC_JSON, codec.CODEC_JSON_ZSTD):
            raw = codec.unpack(codec_tag, body)
        else:
            try:
                if codec_tag == CODEC_ZSTD:
                    raw = codec.decompressor().decompress(body)
                elif codec_tag == CODEC_ZSTD_DELTA and base is not None:
                    dictionary = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
                    raw = zstandard.ZstdDecompressor(dict_data=dictionary).decompress(body)
                else:
                    raise DataIntegrityError(
                        f"a record has codec {codec_tag!r} and base {'present' if base else 'missing'}"
                    )
            except zstandard.ZstdError as exc:
                raise DataIntegrityError(f"a stored record failed to decompress: {exc}") from exc
        if digest and codec.digest(raw) != digest:
            raise DataIntegrityError(f"a stored record (digest {digest}) decoded to other bytes: corrupt")
        return raw

    def state(self, state_id: str, codec_tag: str, body: bytes, parts: Iterable[tuple[str, StoredBlob]]) -> Any:
        """Rebuild a state from its manifest row and parts (or a legacy whole-state body)."""
        if codec_tag != CODEC_MANIFEST:
            return codec.load(codec_tag, body)
        state: dict[str, Any] = {}
        manifest: list[tuple[str, str]] = []
        for key, blob in parts:
            manifest.append((key, blob.id))
            value = orjson.loads(self.blob_bytes(blob))
            if key == REST:
                state.update(value)
            else:
                state[key] = value
        if manifest_id(manifest) != state_id:
            raise DataIntegrityError(f"game state {state_id} has missing or foreign parts")
        return state
