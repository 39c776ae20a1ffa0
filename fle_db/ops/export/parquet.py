"""The ``parquet`` export format (analysis; not importable).

``parquet`` (analysis; needs ``pip install 'fle-db[parquet]'``; not importable). One row per
checkpoint (a trajectory without checkpoints: one row with null ``step_number``), zstd-compressed
row groups of at most 2,048 rows or ~16 MiB of JSON. Columns: ``trajectory_id``,
``step_number`` (int64), the trajectory's ``agent_type``, ``task``, ``total_reward`` (float64),
``success`` (bool), ``parent_trajectory_id``, ``parent_step_number`` (int64), ``trajectory`` and
``metadata`` (JSON text, repeated per row), the step's ``reward`` (float64), ``step``,
``agent_output``, ``environment_feedback`` (JSON text or null), ``game_state_id`` and
``game_state`` (canonical JSON text or null).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, Any

from ...errors import ConfigurationError
from ...validation import is_number
from .common import Checkpoint, json_text, text_or_none

_PARQUET_ROWS = 2048
_PARQUET_BYTES = 16 * 1024 * 1024
_PARQUET_HINT = "pip install 'fle-db[parquet]'"


class ParquetSink:
    """Writes the ``parquet`` format."""

    needs_states = True
    skipped = 0

    def __init__(self, raw: IO[bytes], max_payload_bytes: int) -> None:
        pa, pq = pyarrow_modules()
        # A row group is flushed at _PARQUET_BYTES of JSON, or sooner at max_payload_bytes: pyarrow
        # holds a row group several times over while writing it, and export memory must stay
        # within 2 x max_payload_bytes + 100 MiB whatever the data.
        self._flush_bytes = min(_PARQUET_BYTES, max_payload_bytes)
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
        # The JSON columns (up to max_payload_bytes a value) get neither a dictionary nor min/max
        # statistics: both would keep copies of whole values in memory and in the file's footer.
        small = ["trajectory_id", "agent_type", "task", "parent_trajectory_id", "game_state_id"]
        self._writer = pq.ParquetWriter(
            raw, self._schema, compression="zstd", use_dictionary=small, write_statistics=[*small, "step_number"]
        )
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        reward = trajectory.get("total_reward")
        common = {
            "trajectory_id": trajectory["id"],
            "agent_type": text_or_none(trajectory.get("agent_type")),
            "task": text_or_none(trajectory.get("task")),
            "total_reward": float(reward) if is_number(reward) else None,
            "success": trajectory.get("success") if isinstance(trajectory.get("success"), bool) else None,
            "parent_trajectory_id": trajectory.get("parent_trajectory_id"),
            "parent_step_number": trajectory.get("parent_step_number"),
            "trajectory": json_text(trajectory),
            "metadata": json_text(metadata),
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
                    "reward": float(step_reward) if is_number(step_reward) else None,
                    "step": json_text(step),
                    "agent_output": json_text(cp.agent_output),
                    "environment_feedback": json_text(cp.environment_feedback),
                    "game_state_id": state_id,
                    "game_state": json_text(cp.game_state),
                }
            )
            count += 1
        if not count:
            self._append({**common, "step_number": None})
        return count

    def _append(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._bytes += sum(len(v) for v in row.values() if isinstance(v, str))
        if len(self._rows) >= _PARQUET_ROWS or self._bytes >= self._flush_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self._schema))
            self._rows, self._bytes = [], 0

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        self._flush()
        self._writer.close()
        return {}


def pyarrow_modules() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or ConfigurationError naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise ConfigurationError(f"format='parquet' needs pyarrow: {_PARQUET_HINT}") from exc
    return pyarrow, pyarrow.parquet
