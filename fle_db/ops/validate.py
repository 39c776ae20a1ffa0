"""``validate()``: a full check of a database, reported as a list of precise problems.

Structure (SQLite ``integrity_check`` and ``foreign_key_check``; PostgreSQL ``amcheck`` where
installed), every blob (CRC-32, decode, digest), every state's manifest, every step, output and
feedback (decode, digest), references (fork points, step parents) and step numbering. Problems
are dicts ``{"severity": "error" | "warning", "kind", "where", "detail"}``; the database is
``ok`` when there is no error. Reads only; streams in chunks, so memory stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..backends.base import CheckpointStore, as_admin
from ..errors import DataIntegrityError, FleDBError
from ..storage.engine import BlobCache, StateDecoder
from ..storage.records import decode_records

Progress = Callable[[str, int], None]


def validate(store: CheckpointStore, progress: Progress | None = None) -> dict[str, Any]:
    """Run every check; ``progress(stage, items_done)`` is told of long stages.

    Raises:
        UnsupportedError: the backend does not implement the AdminStore role (its scans).
    """
    backend = as_admin(store)
    decoder = StateDecoder(BlobCache(16 * 1024 * 1024))  # its own cache: verify, don't trust
    problems: list[dict[str, Any]] = []

    def report(severity: str, kind: str, where: str, detail: str) -> None:
        problems.append({"severity": severity, "kind": kind, "where": where, "detail": detail})

    try:
        for kind, where, detail in backend.structure_problems():
            report("error", kind, where, detail)
    except FleDBError as exc:
        report("error", "structure", "database", str(exc))
        return {"ok": False, "problems": problems, "checked": {}}
    checked = {"blobs": 0, "states": 0, "records": 0, "trajectories": 0}
    for blob in backend.iter_blobs():
        try:
            decoder.blob_bytes(blob)
        except DataIntegrityError as exc:
            report("error", "blob", f"blob {blob.id}", str(exc))
        checked["blobs"] += 1
        if progress and checked["blobs"] % 1000 == 0:
            progress("blobs", checked["blobs"])
    for state_id, detail in backend.manifest_problems():
        report("error", "state", f"game state {state_id}", detail)
    for trajectory_id in backend.iter_trajectory_ids():
        for kind, rows in backend.trajectory_records(trajectory_id):
            try:
                decode_records(decoder, rows)
            except DataIntegrityError as exc:
                report("error", "record", f"{kind} of trajectory {trajectory_id!r}", str(exc))
            checked["records"] += len(rows)
        checked["trajectories"] += 1
        if progress and checked["trajectories"] % 100 == 0:
            progress("trajectories", checked["trajectories"])
    for severity, kind, where, detail in backend.reference_problems():
        report(severity, kind, where, detail)
    for where, detail in backend.numbering_problems():
        report("warning", "numbering", where, detail)
    checked["states"] = backend.statistics()["game_states"]
    return {"ok": not any(p["severity"] == "error" for p in problems), "problems": problems, "checked": checked}
