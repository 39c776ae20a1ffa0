"""Structural diff of two game states, per top-level key.

Objects are compared key by key (paths like ``inventory.iron-plate``); lists as multisets of
their items (``entities[+]`` / ``entities[-]``: what was added and removed, whatever moved), so
a factory that gained one entity shows that entity, not a shifted list. A string that is
base64 of zlib-compressed JSON — how FLE stores entities — is decoded first (at most
:data:`MAX_DECODED_BYTES`), so the diff lists entities rather than two opaque strings.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections import Counter
from typing import Any

import orjson

#: The most bytes a base64+zlib string is inflated to; larger ones stay strings.
MAX_DECODED_BYTES = 8 * 1024 * 1024
#: Changes listed per top-level key before the rest are counted only.
MAX_CHANGES = 500
#: Characters of a value shown in a change.
PREVIEW_CHARS = 300


def decode_packed(value: Any) -> Any:
    """``value`` decoded if it is a base64 string of zlib-compressed JSON (within the size cap),
    else ``value`` unchanged. Never raises for bad input."""
    if not isinstance(value, str) or len(value) < 8 or len(value) > MAX_DECODED_BYTES:
        return value
    try:
        packed = base64.b64decode(value, validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(packed, MAX_DECODED_BYTES)
        if inflater.unconsumed_tail or not inflater.eof:
            return value  # larger than the cap, or truncated
        return orjson.loads(raw)
    except (binascii.Error, ValueError, zlib.error, orjson.JSONDecodeError):
        return value


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def preview(value: Any) -> str:
    """A one-line rendering of a value, cut at :data:`PREVIEW_CHARS`."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _walk(path: str, old: Any, new: Any, out: list[dict[str, Any]]) -> None:
    old, new = decode_packed(old), decode_packed(new)
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(old.keys() | new.keys(), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                out.append({"kind": "removed", "path": sub, "old": preview(old[key])})
            elif key not in old:
                out.append({"kind": "added", "path": sub, "new": preview(new[key])})
            elif old[key] != new[key]:
                _walk(sub, old[key], new[key], out)
        return
    if isinstance(old, list) and isinstance(new, list):
        before = Counter(_canonical(item) for item in old)
        after = Counter(_canonical(item) for item in new)
        for raw, count in sorted((before - after).items()):
            out.extend(
                {"kind": "removed", "path": f"{path}[-]", "old": preview(orjson.loads(raw))} for _ in range(count)
            )
        for raw, count in sorted((after - before).items()):
            out.extend({"kind": "added", "path": f"{path}[+]", "new": preview(orjson.loads(raw))} for _ in range(count))
        if before == after and old != new:
            out.append({"kind": "changed", "path": path, "old": "(same items, another order)", "new": ""})
        return
    out.append({"kind": "changed", "path": path, "old": preview(old), "new": preview(new)})


def diff_states(old: dict[str, Any] | None, new: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per top-level key of either state: ``{"key", "status", "changes", "omitted"}``, status
    ``added`` / ``removed`` / ``changed`` / ``unchanged``; ``changes`` lists at most
    :data:`MAX_CHANGES` ``{"kind", "path", "old"?, "new"?}``."""
    old, new = old or {}, new or {}
    result = []
    for key in sorted(old.keys() | new.keys(), key=str):
        if key not in new:
            status = "removed"
        elif key not in old:
            status = "added"
        else:
            status = "unchanged" if old[key] == new[key] else "changed"
        changes: list[dict[str, Any]] = []
        if status == "changed":
            _walk(str(key), old[key], new[key], changes)
        elif status == "added":
            changes.append({"kind": "added", "path": str(key), "new": preview(new[key])})
        elif status == "removed":
            changes.append({"kind": "removed", "path": str(key), "old": preview(old[key])})
        result.append(
            {
                "key": str(key),
                "status": status,
                "changes": changes[:MAX_CHANGES],
                "omitted": max(0, len(changes) - MAX_CHANGES),
            }
        )
    return result
