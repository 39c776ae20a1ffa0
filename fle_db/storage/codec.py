"""Payload codec: JSON values to tagged, compressed bytes and back.

Every payload (step body, game state, agent output, feedback, metadata value) is stored as
canonical JSON (orjson, keys sorted) so that equal values have equal bytes: the blake2b digest
of those bytes is the content address of game states and the idempotency check of steps.
Payloads above :data:`COMPRESS_MIN_BYTES` are zstd-compressed; the codec tag stored beside each
blob says which, so old rows stay readable when the storage engine grows new codecs.

Validation is exact rather than permissive: a value is accepted only if decoding its JSON gives a
value equal (``==``, same types) to the input, so what a caller saves is what it loads. orjson
would silently turn NaN into ``null``, a tuple into a list and a datetime into a string; the
round-trip comparison catches each of these in C speed, and only a rejected value pays for the
slow walk that names the offending path.
"""

from __future__ import annotations

import gc
import hashlib
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import zstandard

from ..errors import DataIntegrityError, PayloadTooLargeError, ValidationError

CODEC_JSON = "json"
CODEC_JSON_ZSTD = "json+zstd"
COMPRESS_MIN_BYTES = 512
ZSTD_LEVEL = 3
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1

_local = threading.local()


def compressor() -> zstandard.ZstdCompressor:
    """This thread's zstd compressor (level :data:`ZSTD_LEVEL`, with zstd's content checksum)."""
    # zstd contexts are not thread-safe; one per thread avoids re-allocating per call.
    found: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if found is None:
        found = _local.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    return found


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's zstd decompressor (without a dictionary)."""
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor()
    return found


#: orjson would turn datetimes, dataclasses and subclasses of str/int/dict/list (IntEnum...) into
#: plain JSON silently; with these options it raises instead, before any round-trip check.
_DUMP_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
_UNSORTED_OPTIONS = _DUMP_OPTIONS & ~orjson.OPT_SORT_KEYS


def canonical_json(value: Any, what: str, max_bytes: int) -> bytes:
    """Encode ``value`` as canonical JSON bytes, proving it decodes back equal.

    Raises:
        ValidationError: the value is not exactly representable in JSON (NaN/inf, tuple, set,
            datetime, non-string key, int beyond 64 bits, NUL character, lone surrogate, nesting
            deeper than 254 levels); the message names the path, e.g. ``value['observation'][3]``.
        PayloadTooLargeError: the encoding exceeds ``max_bytes``.
    """
    raw = dumps(value, what, max_bytes)
    verify_exact(raw, value, what)
    return raw


def dumps(value: Any, what: str, max_bytes: int, sort_keys: bool = True) -> bytes:
    """Canonical (sorted-key) JSON bytes of ``value``, not yet proven exact (see :func:`verify_exact`);
    with ``sort_keys=False`` the same text with the keys in the value's order (as long, and
    refused for the same reasons)."""
    try:
        raw = orjson.dumps(value, option=_DUMP_OPTIONS if sort_keys else _UNSORTED_OPTIONS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise ValidationError(f"{what}: {_find_problem(value, 'value') or exc}") from None
    if len(raw) > max_bytes:
        raise PayloadTooLargeError(
            f"{what} is {len(raw):,} bytes of JSON, over the limit of {max_bytes:,} (max_payload_bytes)"
        )
    return raw


def verify_exact(raw: bytes, value: Any, what: str) -> None:
    """Prove ``raw`` decodes to a value equal to ``value``, types included; else ValidationError."""
    if orjson.loads(raw) != value:
        raise ValidationError(f"{what}: {_find_problem(value, 'value') or 'does not round-trip through JSON'}")
    # A NUL is written as \u0000; so is a backslash followed by "u0000" (as \\u0000): only the
    # slow walk tells them apart, and only texts holding that sequence pay for it.
    if b"\\u0000" in raw and (problem := _find_problem(value, "value")):
        raise ValidationError(f"{what}: {problem}")


def _find_problem(value: Any, path: str, depth: int = 0) -> str | None:
    """Name the first part of ``value`` that JSON cannot carry exactly (slow; error path only)."""
    if depth > 254:
        return f"{path} is nested more than 254 levels deep"
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        if "\x00" in value:
            return f"{path} contains a NUL character"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path} contains a lone surrogate (not valid Unicode)"
        return None
    if type(value) is int:
        return None if _INT_MIN <= value <= _INT_MAX else f"{path} is an integer outside the 64-bit range"
    if type(value) is float:
        return None if math.isfinite(value) else f"{path} is {value!r}; NaN and infinity are not allowed"
    if type(value) is dict:
        for key, item in value.items():
            if not isinstance(key, str) or type(key) is not str:
                return f"{path} has a non-string key {key!r}; JSON object keys are strings"
            problem = _find_problem(key, f"{path} key {key!r}", depth + 1) or _find_problem(
                item, f"{path}[{key!r}]", depth + 1
            )
            if problem:
                return problem
        return None
    if type(value) is list:
        for index, item in enumerate(value):
            problem = _find_problem(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    hint = " (use a list)" if isinstance(value, (tuple, set, frozenset)) else ""
    if hasattr(value, "isoformat"):
        hint = " (pass an ISO 8601 string)"
    return f"{path} is of type {type(value).__name__}, which JSON cannot store exactly{hint}"


def digest(raw: bytes) -> str:
    """Content address of canonical bytes: 128-bit blake2b, hex."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def pack(raw: bytes) -> tuple[str, bytes]:
    """Compress canonical JSON bytes when it pays; returns ``(codec_tag, blob)``."""
    if len(raw) < COMPRESS_MIN_BYTES:
        return CODEC_JSON, raw
    return CODEC_JSON_ZSTD, compressor().compress(raw)


def unpack(codec: str, blob: bytes) -> bytes:
    """Inverse of :func:`pack`. Raises DataIntegrityError on an unknown codec or corrupt blob."""
    if codec == CODEC_JSON:
        return bytes(blob)
    if codec == CODEC_JSON_ZSTD:
        try:
            return decompressor().decompress(blob)
        except zstandard.ZstdError as exc:
            raise DataIntegrityError(f"a stored blob failed to decompress: {exc}") from exc
    raise DataIntegrityError(f"unknown codec {codec!r}: written by a newer fle-db?")


def load(codec: str, blob: bytes) -> Any:
    """Decode a stored blob to its JSON value. Raises DataIntegrityError if it is not valid."""
    try:
        return orjson.loads(unpack(codec, blob))
    except orjson.JSONDecodeError as exc:
        raise DataIntegrityError(f"a stored blob is not valid JSON: {exc}") from exc


_gc_lock = threading.Lock()
_gc_pausers = 0
_gc_was_enabled = False


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while decoding many records.

    Decoding builds many container objects that survive; each allocation threshold crossed
    triggers a collection that rescans all of them (measured: keeping 1000 decoded states costs
    1.5 s with the collector running, 0.2 s without; ``load_game_states`` of 600 FLE states:
    ~0.28 s paused, ~0.6-0.87 s not). Decoded JSON holds no reference cycles. Encoding gains
    nothing measurable (600 steps saved: 0.27-0.57 s either way), so writes do not pause it.

    The collector is process-wide and clients run in many threads: the pauses are counted under
    a lock, so the collector stays off while any thread is inside a pause and is enabled again,
    if it was enabled before the first, when the last one leaves.
    """
    global _gc_pausers, _gc_was_enabled
    with _gc_lock:
        if _gc_pausers == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pausers += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pausers -= 1
            if _gc_pausers == 0 and _gc_was_enabled:
                gc.enable()
