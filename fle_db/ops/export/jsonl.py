"""The ``jsonl`` export format, the one :func:`~fle_db.ops.export.importer.import_data` reads.

``jsonl`` (importable). One JSON object per line, each with a ``kind``; a ``.zst`` path is
zstd-compressed (with zstd's content checksum). Lines, in order:

* ``header``: ``format`` (``"fle-db-export"``), ``version`` (:data:`FORMAT_VERSION`),
  ``fle_db_version``, ``schema_version`` (the source database's migration revision),
  ``backend``, ``created_at`` (ISO 8601 UTC) and the ``filters`` used;
* per trajectory, parents before their forks: a ``trajectory`` line (``trajectory``: the record
  as :meth:`~fle_db.DatabaseClient.load_trajectory` returns it; ``metadata``: ``{key: value}``);
  one ``checkpoint`` line per step number in order (``trajectory_id``, ``step_number``, and
  ``step``, ``agent_output``, ``environment_feedback``, ``game_state``: each the record as loaded,
  or null when absent; ``step`` carries its ``game_state_id``: with ``game_state`` null, that state
  was thinned, see :meth:`~fle_db.DatabaseClient.thin`); then a ``trajectory_end`` line
  with the number of checkpoints and ``digest``, the blake2b-128 of the exact bytes of the
  trajectory's lines from its ``trajectory`` line through its last ``checkpoint`` line;
* an ``end`` line with the number of trajectories and checkpoints.

Values are written by orjson exactly as loaded, so every value, game states included, comes
back equal and of the same type (the canonical JSON of what is imported is byte-equal to the
canonical JSON of what was exported).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..._version import __version__
from ...backends.base import TrajectoryFilter
from ...instants import iso, now_us, optional_iso
from .common import Checkpoint, Writable, line

if TYPE_CHECKING:
    from ...client import DatabaseClient

FORMAT_NAME = "fle-db-export"
#: The JSONL layout version this fle-db writes and reads; a file of another version is refused.
FORMAT_VERSION = 1


def header(client: DatabaseClient, criteria: TrajectoryFilter) -> dict[str, Any]:
    """The first line of a ``jsonl`` export."""
    return {
        "kind": "header",
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fle_db_version": __version__,
        "schema_version": client.get_migration_status()["current_version"],
        "backend": client.settings.backend,
        "created_at": iso(now_us()),
        "filters": filters(criteria),
    }


def filters(criteria: TrajectoryFilter) -> dict[str, Any]:
    """The filters of an export, as its header and the ``hf`` dataset card state them."""
    return {
        "trajectory_ids": list(criteria.trajectory_ids) if criteria.trajectory_ids is not None else None,
        "task": criteria.task,
        "agent_type": criteria.agent_type,
        "since": optional_iso(criteria.since_us),
        "until": optional_iso(criteria.until_us),
        "success": criteria.success,
        "min_total_reward": criteria.min_total_reward,
    }


class JsonlSink:
    """Writes the ``jsonl`` format."""

    needs_states = True
    skipped = 0

    def __init__(self, out: Writable, first: dict[str, Any]) -> None:
        self._out = out
        out.write(line(first))

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        tid = trajectory["id"]
        digest = hashlib.blake2b(digest_size=16)

        def emit(record: dict[str, Any]) -> None:
            data = line(record)
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
            line({"kind": "trajectory_end", "trajectory_id": tid, "checkpoints": count, "digest": digest.hexdigest()})
        )
        return count

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        self._out.write(line({"kind": "end", "trajectories": trajectories, "checkpoints": checkpoints}))
        return {}
