"""The ``hf`` export format: a Hugging Face dataset folder (Parquet shards and a dataset card).

``hf`` (needs ``pip install 'fle-db[parquet]'``; not importable). ``path`` is a folder, absent
or empty; it is written beside it and renamed into place when complete. Contents:

* ``data/train-NNNNN-of-MMMMM.parquet``: one row per trajectory, the ``sft`` record as columns:
  ``trajectory_id``, ``task``, ``agent_type`` (string), ``total_reward`` (float64), ``success``
  (bool), ``steps`` (int64), ``messages`` (list of ``{content, role}`` strings), ``step_rewards``,
  ``step_values``, ``step_advantages`` (lists of float64, aligned with the assistant turns; see
  :mod:`.chat`); zstd-compressed, a new shard every ~128 MiB of text, row groups of at most
  ~16 MiB (or ``max_payload_bytes``) of text;
* ``README.md``: a dataset card whose YAML header declares ``configs`` (``data_files``: split
  ``train``, ``data/train-*``, as the Hub expects) and ``dataset_info`` (features, row count),
  followed by the schema, the row counts, the filters used and the fle-db version.

``datasets.load_dataset("parquet", data_dir=path)`` and ``load_dataset(path)`` load it. A
trajectory without agent code is skipped (counted in ``skipped``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..._version import __version__
from ...instants import iso, now_us
from ...validation import is_number
from .chat import Conversation, NodeStats
from .common import Checkpoint, text_or_none
from .parquet import pyarrow_modules

_SHARD_BYTES = 128 * 1024 * 1024
_GROUP_BYTES = 16 * 1024 * 1024
_GROUP_ROWS = 1024

#: Column name, Hugging Face feature (as the card's YAML declares it), meaning.
_FEATURES: tuple[tuple[str, str, str], ...] = (
    ("trajectory_id", "dtype: string", "the trajectory's id"),
    ("task", "dtype: string", "its task (text), or null"),
    ("agent_type", "dtype: string", "its agent type, or null"),
    ("total_reward", "dtype: float64", "its total reward, or null"),
    ("success", "dtype: bool", "whether it succeeded, or null"),
    ("steps", "dtype: int64", "its number of checkpoints"),
    ("messages", "list: [content: string, role: string]", "the conversation (as the `chat` export)"),
    ("step_rewards", "sequence: float64", "each assistant turn's step reward, or null"),
    ("step_values", "sequence: float64", "each assistant turn's search-node value, or null"),
    ("step_advantages", "sequence: float64", "each assistant turn's search-node advantage, or null"),
)


class HfSink:
    """Writes the ``hf`` format into ``folder`` (a new folder the caller renames into place)."""

    needs_states = False

    def __init__(self, folder: Path, node_stats: NodeStats, filters: dict[str, Any], max_payload_bytes: int) -> None:
        pa, pq = pyarrow_modules()
        self._pa, self._pq = pa, pq
        self._folder = folder
        (folder / "data").mkdir()
        message = pa.struct([("content", pa.string()), ("role", pa.string())])
        floats = pa.list_(pa.float64())
        string = pa.string()
        self._schema = pa.schema(
            [
                ("trajectory_id", string),
                ("task", string),
                ("agent_type", string),
                ("total_reward", pa.float64()),
                ("success", pa.bool_()),
                ("steps", pa.int64()),
                ("messages", pa.list_(message)),
                ("step_rewards", floats),
                ("step_values", floats),
                ("step_advantages", floats),
            ]
        )
        self._node_stats = node_stats
        self._filters = filters
        self._group_bytes = min(_GROUP_BYTES, max_payload_bytes)
        self._writer: Any = None
        self._shards: list[Path] = []
        self._shard_bytes = 0
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self.rows = self.skipped = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        talk = Conversation.of(trajectory, checkpoints, self._node_stats(trajectory["id"]))
        if not talk.rewards:
            self.skipped += 1
            return talk.steps
        reward = trajectory.get("total_reward")
        success = trajectory.get("success")
        self._rows.append(
            {
                "trajectory_id": trajectory["id"],
                **{key: text_or_none(trajectory.get(key)) for key in ("task", "agent_type")},
                "total_reward": float(reward) if is_number(reward) else None,
                "success": success if isinstance(success, bool) else None,
                "steps": talk.steps,
                "messages": talk.messages,
                "step_rewards": talk.rewards,
                "step_values": talk.values,
                "step_advantages": talk.advantages,
            }
        )
        self.rows += 1
        self._bytes += sum(len(m["content"]) for m in talk.messages)
        if len(self._rows) >= _GROUP_ROWS or self._bytes >= self._group_bytes:
            self._flush()
        return talk.steps

    def _flush(self) -> None:
        if self._writer is None or self._shard_bytes >= _SHARD_BYTES:
            self._close_shard()
            self._shards.append(self._folder / "data" / f"train-{len(self._shards):05d}.parquet")
            self._writer = self._pq.ParquetWriter(self._shards[-1], self._schema, compression="zstd")
        self._writer.write_table(self._pa.Table.from_pylist(self._rows, schema=self._schema))
        self._shard_bytes += self._bytes
        self._rows, self._bytes = [], 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer, self._shard_bytes = None, 0

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        if self._rows or not self._shards:
            self._flush()  # at least one shard, even an empty one: the dataset has a schema
        self._close_shard()
        total = len(self._shards)
        for index, shard in enumerate(self._shards):
            shard.rename(shard.with_name(f"train-{index:05d}-of-{total:05d}.parquet"))
        (self._folder / "README.md").write_text(self._card(trajectories), encoding="utf-8")
        return {"shards": total, "rows": self.rows}

    def _card(self, trajectories: int) -> str:
        """The dataset card: YAML header (configs, dataset_info) and a description."""
        features = []
        for name, feature, _ in _FEATURES:
            kind, _, value = feature.partition(": ")
            if kind == "list":
                fields = [f.split(": ") for f in value.strip("[]").split(", ")]
                sub = "".join(f"      - name: {n}\n        dtype: {t}\n" for n, t in fields)
                features.append(f"  - name: {name}\n    list:\n{sub}")
            else:
                features.append(f"  - name: {name}\n    {kind}: {value}\n")
        schema = "".join(f"| `{name}` | {feature} | {meaning} |\n" for name, feature, meaning in _FEATURES)
        filters = orjson.dumps(self._filters, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode()
        return (
            "---\n"
            "configs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n"
            "dataset_info:\n  features:\n" + "".join(features) + "  splits:\n  - name: train\n"
            f"    num_examples: {self.rows}\n"
            "tags:\n- fle-db\n- agent-trajectories\n---\n\n"
            "# Agent trajectories exported by fle-db\n\n"
            f"One row per trajectory: its conversation and per-turn rewards and search values. Written by fle-db "
            f"{__version__} at {iso(now_us())}.\n\n"
            f"- rows: {self.rows} ({trajectories} trajectories selected, {self.skipped} without agent code skipped)\n"
            f"- shards: {len(self._shards)} (`data/train-*.parquet`)\n\n"
            "## Schema\n\n| column | feature | meaning |\n|---|---|---|\n" + schema + "\n"
            "## Filters used\n\n```json\n" + filters + "\n```\n\n"
            "## Loading\n\n```python\nimport datasets\n"
            'ds = datasets.load_dataset("parquet", data_dir="<this folder>")\n```\n'
        )
