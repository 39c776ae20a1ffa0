"""Thinned game states in the storage engine: the marker a thinned state carries, and the
re-encoding of the blobs whose keyframe a thinning drops.

A thinned state keeps its ``game_states`` row (the steps that name it keep naming it, so saving
the original checkpoint again is still recognised as identical) but loses its parts: its body
becomes :data:`THINNED_BODY`. A stored manifest state always has at least one part (``rest``), so
"manifest, no parts, this body" can only mean thinned. Saving the same state again inserts its
parts (their rows are absent, so the ordinary insert-if-absent stores them) and the state is
whole again; nothing in the write path has to know about thinning.

Blobs are shared, content-addressed parts; a delta's base is always a keyframe. When the blobs
of the dropped states include a keyframe that kept blobs are deltas of, :func:`rebase` re-encodes
those: the first becomes a keyframe, the others deltas against it where that pays. Blob ids are
digests of the decoded bytes, so no reference changes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import zstandard

from . import codec
from .engine import (
    CODEC_MANIFEST,
    CODEC_ZSTD,
    CODEC_ZSTD_DELTA,
    DELTA_MAX_RATIO,
    BlobRow,
    StateDecoder,
    StoredBlob,
)

#: The body of a thinned state's row (a manifest state's body is otherwise empty).
THINNED_BODY = b"thinned"


def is_thinned(codec_tag: str, body: bytes, part_count: int) -> bool:
    """Whether a stored state row (with ``part_count`` parts) is a thinned state."""
    return codec_tag == CODEC_MANIFEST and part_count == 0 and bytes(body) == THINNED_BODY


def rebase(decoder: StateDecoder, dependents: Sequence[StoredBlob]) -> list[BlobRow]:
    """New encodings of ``dependents``: deltas (each with its ``base`` attached) of one keyframe
    that is going away. The first becomes a keyframe; each other one a delta against it when that
    is at most :data:`~.engine.DELTA_MAX_RATIO` of its size, else a plain frame. Every blob's bytes
    are verified (CRC, digest) while decoding. Raises DataIntegrityError on a corrupt blob."""
    raws = [decoder.blob_bytes(blob) for blob in dependents]
    first_raw = raws[0]
    body = codec.compressor().compress(first_raw)
    rows = [BlobRow(dependents[0].id, CODEC_ZSTD, body, len(first_raw), zlib.crc32(body))]
    if len(dependents) == 1:
        return rows
    dictionary = zstandard.ZstdCompressionDict(first_raw, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    against_first = zstandard.ZstdCompressor(dict_data=dictionary, level=codec.ZSTD_LEVEL, write_checksum=True)
    for blob, raw in zip(dependents[1:], raws[1:], strict=True):
        delta = against_first.compress(raw)
        if len(delta) <= DELTA_MAX_RATIO * len(raw):
            rows.append(BlobRow(blob.id, CODEC_ZSTD_DELTA, delta, len(raw), zlib.crc32(delta), dependents[0].id))
        else:
            plain = codec.compressor().compress(raw)
            rows.append(BlobRow(blob.id, CODEC_ZSTD, plain, len(raw), zlib.crc32(plain)))
    return rows


__all__ = ["THINNED_BODY", "is_thinned", "rebase"]
