"""Training exports (issue 15 item 1): ``sft``, ``preference``, ``hf`` and ``adp``, on every backend.

The tree: ``r`` (4 steps, total reward 5) forked at step 1 by ``f1`` (9) and ``f2`` (1), at step
0 by ``g`` (5: a tie with ``r``) and at step 2 by ``h`` (7); a search tree ``n`` / ``n2`` whose
node values rank the other way round from their trajectories' total rewards.
"""

from __future__ import annotations

import gc
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any, Literal

import orjson
import pytest
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict, Field, model_validator

from fle_db import DatabaseClient, ValidationError
from fle_db.backends.base import TrajectoryFilter
from fle_db.cli import main
from fle_db.ops.export import export_data
from fle_db.ops.export.adp import ADP_SCHEMA_VERSION


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def steps(db: DatabaseClient, tid: str, numbers: range, reward: float = 0.5, values: list[float] | None = None) -> None:
    for i, n in enumerate(numbers):
        node = {"tree": "s", "depth": n, "value": values[i], "advantage": -values[i]} if values else None
        db.save_step(
            {"trajectory_id": tid, "step_number": n, "reward": reward * n},
            agent_output={"code": f"{tid}-code-{n}"},
            environment_feedback={"stdout": f"{tid}-out-{n}"},
            node=node,
        )


@pytest.fixture
def tree(db: DatabaseClient) -> DatabaseClient:
    db.save_trajectory({"id": "r", "task": "build", "system_prompt": "You play.", "total_reward": 5, "success": True})
    steps(db, "r", range(4))
    for fork, at, reward in (("f1", 1, 9.0), ("f2", 1, 1.0), ("g", 0, 5.0), ("h", 2, 7.0)):
        db.fork_trajectory("r", at, fork, task="build", total_reward=reward, success=reward > 5)
        steps(db, fork, range(at + 1, at + 3))
    db.save_trajectory({"id": "n", "task": "search", "total_reward": 10.0, "success": False})
    steps(db, "n", range(2), values=[0.1, 0.2])
    db.fork_trajectory("n", 0, "n2", task="search", total_reward=0.0)
    steps(db, "n2", range(1, 2), values=[0.8])
    return db


def turns(tid: str, numbers: range) -> list[dict[str, str]]:
    return [
        m
        for n in numbers
        for m in ({"role": "assistant", "content": f"{tid}-code-{n}"}, {"role": "user", "content": f"{tid}-out-{n}"})
    ]


# -- sft --------------------------------------------------------------------------------------
def test_sft_adds_rewards_values_and_advantages_aligned_with_the_assistant_turns(
    tree: DatabaseClient, tmp_path: Path
) -> None:
    report = tree.export_data(tmp_path / "sft.jsonl", "sft")
    records = {r["metadata"]["trajectory_id"]: r for r in lines(tmp_path / "sft.jsonl")}
    assert report["trajectories"] == len(records) == 7
    r = records["r"]
    assert r["messages"] == [
        {"role": "system", "content": "You play."},
        {"role": "user", "content": "build"},
        *turns("r", range(4)),
    ]
    assert r["step_rewards"] == [0.0, 0.5, 1.0, 1.5] and r["step_values"] == [None] * 4
    assert records["n"]["step_values"] == [0.1, 0.2] and records["n"]["step_advantages"] == [-0.1, -0.2]
    assert records["n2"]["step_values"] == [0.8]
    assert all(len(x["step_rewards"]) == sum(m["role"] == "assistant" for m in x["messages"]) for x in records.values())


def test_sft_filters_on_success_and_minimum_total_reward(tree: DatabaseClient, tmp_path: Path) -> None:
    tree.export_data(tmp_path / "a.jsonl", "sft", success=True, min_total_reward=6)
    assert sorted(r["metadata"]["trajectory_id"] for r in lines(tmp_path / "a.jsonl")) == ["f1", "h"]
    tree.export_data(tmp_path / "b.jsonl", "sft", success=False)
    assert sorted(r["metadata"]["trajectory_id"] for r in lines(tmp_path / "b.jsonl")) == ["f2", "g", "n"]
    with pytest.raises(ValidationError, match="min_total_reward"):
        tree.export_data(tmp_path / "c.jsonl", "sft", min_total_reward=float("nan"))
    with pytest.raises(ValidationError, match="success"):
        tree.export_data(tmp_path / "c.jsonl", "sft", success="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "c.jsonl").exists()


# -- preference -------------------------------------------------------------------------------
def test_preference_pairs_the_best_and_worst_continuation_of_every_branching_step(
    tree: DatabaseClient, tmp_path: Path
) -> None:
    report = tree.export_data(tmp_path / "p.jsonl", "preference")
    pairs = {(p["source"]["trajectory_id"], p["source"]["step_number"]): p for p in lines(tmp_path / "p.jsonl")}
    assert set(pairs) == {("r", 1), ("r", 2), ("n", 0)}
    assert report["pairs"] == 3 and report["ties"] == 1  # (r, 0): r and g are both worth 5
    at_1 = pairs[("r", 1)]
    assert at_1["prompt"] == [
        {"role": "system", "content": "You play."},
        {"role": "user", "content": "build"},
        *turns("r", range(2)),
    ]
    assert at_1["chosen"] == [{"role": "assistant", "content": "f1-code-2"}]
    assert at_1["rejected"] == [{"role": "assistant", "content": "f2-code-2"}]
    assert (at_1["chosen_value"], at_1["rejected_value"]) == (9.0, 1.0)
    assert at_1["source"]["chosen"] == {"trajectory_id": "f1", "step_number": 2}
    at_2 = pairs[("r", 2)]  # the held prompt of (r, 1) extended by one step
    assert at_2["prompt"][2:] == turns("r", range(3))
    assert at_2["chosen"][0]["content"] == "h-code-3" and at_2["rejected"][0]["content"] == "r-code-3"
    searched = pairs[("n", 0)]  # node values (0.8 > 0.2) outrank the total rewards (0 < 10)
    assert searched["chosen"][0]["content"] == "n2-code-1" and searched["chosen_value"] == 0.8
    assert searched["rejected_value"] == 0.2
    for pair in pairs.values():
        assert pair["chosen"] != pair["rejected"] and pair["chosen_value"] > pair["rejected_value"]
        children = tree.get_children(pair["source"]["trajectory_id"], pair["source"]["step_number"])
        assert pair["source"]["chosen"] in children and pair["source"]["rejected"] in children


def test_preference_counts_explicit_children_as_continuations(db: DatabaseClient, tmp_path: Path) -> None:
    db.save_trajectory({"id": "a", "total_reward": 1.0})
    steps(db, "a", range(2))
    db.save_trajectory({"id": "b", "total_reward": 3.0})
    db.save_step(
        {"trajectory_id": "b", "step_number": 5, "parent_trajectory_id": "a", "parent_step_number": 0},
        agent_output={"code": "b-code-5"},
    )
    db.export_data(tmp_path / "p.jsonl", "preference", trajectory_ids=["a"])
    (pair,) = lines(tmp_path / "p.jsonl")
    assert pair["prompt"] == turns("a", range(1))
    assert pair["chosen"][0]["content"] == "b-code-5" and pair["rejected"][0]["content"] == "a-code-1"


# -- hf ---------------------------------------------------------------------------------------
def test_hf_folder_loads_with_datasets_and_its_card_states_schema_counts_filters_and_version(
    tree: DatabaseClient, tmp_path: Path
) -> None:
    import datasets  # the test extra installs it

    folder = tmp_path / "ds"
    report = tree.export_data(folder, "hf", task="build")
    assert report["rows"] == 5 and report["shards"] == 1
    assert sorted(p.name for p in folder.rglob("*")) == ["README.md", "data", "train-00000-of-00001.parquet"]
    loaded = datasets.load_dataset("parquet", data_dir=str(folder), split="train")
    assert loaded.num_rows == 5 and set(loaded["trajectory_id"]) == {"r", "f1", "f2", "g", "h"}
    row = next(r for r in loaded if r["trajectory_id"] == "r")
    assert row["messages"][2] == {"content": "r-code-0", "role": "assistant"}
    assert row["step_rewards"] == [0.0, 0.5, 1.0, 1.5] and row["success"] is True
    by_card = datasets.load_dataset(str(folder), split="train")  # the card's configs/data_files
    assert by_card.num_rows == 5
    card = (folder / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "path: data/train-*" in header and "num_examples: 5" in header and "- name: step_values" in header
    from fle_db import __version__

    assert __version__ in card and '"task": "build"' in card and "| `messages` |" in card


def test_hf_refuses_a_non_empty_folder_or_a_file_and_leaves_nothing_behind(
    tree: DatabaseClient, tmp_path: Path
) -> None:
    pytest.importorskip("pyarrow")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValidationError, match="not empty"):
        tree.export_data(tmp_path / "full", "hf")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValidationError, match="not a folder"):
        tree.export_data(tmp_path / "file", "hf")
    with pytest.raises(ValidationError, match=r"drop the \.zst suffix"):
        tree.export_data(tmp_path / "x.zst", "hf")
    assert sorted(os.listdir(tmp_path)) == ["file", "full"]
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert tree.export_data(tmp_path / "empty", "hf")["rows"] == 7  # an empty folder is replaced


def test_a_failing_folder_export_leaves_nothing_behind(tree: DatabaseClient, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")

    def ids() -> Any:
        yield "r"
        raise RuntimeError("the database went away")

    with pytest.raises(RuntimeError):
        export_data(tree, ids(), tmp_path / "ds", "hf", TrajectoryFilter())
    assert os.listdir(tmp_path) == []


# -- adp --------------------------------------------------------------------------------------
# The Agent Data Protocol's pydantic models, rebuilt from neulab/agent-data-protocol schema/
# (trajectory.py at 0dc087521a12, SCHEMA_VERSION 1.5.0): extra fields forbidden, class_ fixed,
# tool actions and their observations linked by tool_call_id.
class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasoning_content: str | None = None
    reward: float | None = None
    tool_call_id: str | None = None


class _CodeAction(_Action):
    class_: Literal["code_action"] = Field(alias="class_")
    language: Literal["python"]
    content: str
    description: str | None


class _TextObservation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    class_: Literal["text_observation"] = Field(alias="class_")
    content: str
    source: Literal["system", "user", "assistant"]
    tool_call_id: str | None = None
    reward: float | None = None


class _Trajectory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_version: Literal["1.5.0", "1.4.0", "1.3.0", "1.2.0", "1.1.0", "1.0.0"]
    id: str
    content: list[_CodeAction | _TextObservation]
    available_code_languages: list[str] | None = None
    details: dict[str, Any] = {}

    @model_validator(mode="after")
    def _linked(self) -> _Trajectory:
        open_calls: dict[str, int] = {}
        for index, item in enumerate(self.content):
            following = self.content[index + 1] if index + 1 < len(self.content) else None
            if isinstance(item, _CodeAction):
                assert not (isinstance(following, _TextObservation) and item.tool_call_id is None), index
                if item.tool_call_id is not None:
                    assert item.tool_call_id not in open_calls
                    open_calls[item.tool_call_id] = index
            elif item.tool_call_id is not None:
                assert open_calls.pop(item.tool_call_id, None) is not None, index
        assert not open_calls
        used = {item.language for item in self.content if isinstance(item, _CodeAction)}
        assert self.available_code_languages is None or set(self.available_code_languages) == used
        return self


def test_adp_records_validate_against_the_agent_data_protocol_schema(tree: DatabaseClient, tmp_path: Path) -> None:
    tree.save_step({"trajectory_id": "odd", "step_number": 0, "observation": "only an answer"})
    report = tree.export_data(tmp_path / "adp.jsonl", "adp")
    records = {r["id"]: _Trajectory.model_validate(r) for r in lines(tmp_path / "adp.jsonl")}
    assert report["trajectories"] == len(records) == 8
    r = records["r"]
    assert r.schema_version == ADP_SCHEMA_VERSION and r.details["total_reward"] == 5
    first, second = r.content[2], r.content[3]
    assert isinstance(first, _CodeAction) and first.content == "r-code-0" and first.reward == 0.0
    assert isinstance(second, _TextObservation) and second.content == "r-out-0"
    assert first.tool_call_id == second.tool_call_id == "r:0"
    assert records["odd"].available_code_languages is None


# -- CLI --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["sft", "preference", "adp", "hf"])
def test_cli_exports_each_training_format_with_filters_and_json_output(db_url: str, fmt: str, tmp_path: Path) -> None:
    if fmt == "hf":
        pytest.importorskip("pyarrow")
    with DatabaseClient(db_url) as db:
        db.save_trajectory({"id": "a", "total_reward": 1.0, "success": True})
        steps(db, "a", range(2))
        db.fork_trajectory("a", 0, "b", total_reward=2.0, success=True)
        steps(db, "b", range(1, 2))
    path = tmp_path / "out"
    args = ["--url", db_url, "--json", "export", str(path), "--format", fmt, "--success", "--min-total-reward", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == fmt and report["trajectories"] == 2
    if fmt == "preference":
        assert report["pairs"] == 1
    result = CliRunner().invoke(main, args)  # hf: the folder is no longer empty
    assert (result.exit_code == 0) == (fmt != "hf"), result.output
    assert "Traceback" not in result.output


# -- memory -----------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["sft", "preference", "adp", "hf"])
def test_training_export_memory_does_not_grow_with_the_number_of_trajectories(
    backend: str, make_url: Any, fmt: str, tmp_path: Path
) -> None:
    """The transient peak (as in test_export) of 24 forked runs stays that of 2: one
    trajectory's text (``preference``: one prompt) and, for ``hf``, a row group bounded by
    ``max_payload_bytes``."""
    if fmt == "hf":
        pytest.importorskip("pyarrow")
    peaks = []
    for count in (2, 24):
        with DatabaseClient(make_url(backend), max_payload_bytes=1024 * 1024) as db:
            for t in range(count):
                db.save_trajectory({"id": f"t{t}", "task": "build", "total_reward": float(t)})
                db.batch_save_steps(
                    [
                        {
                            "trajectory_id": f"t{t}",
                            "step_number": n,
                            "agent_output": {"code": f"# {t} {n}\n" + "x = 1\n" * 4000},
                            "environment_feedback": {"stdout": "ok " * 1000},
                        }
                        for n in range(30)
                    ]
                )
                db.fork_trajectory(f"t{t}", 20, f"t{t}-fork", total_reward=t + 0.5)
                db.save_step(
                    {"trajectory_id": f"t{t}-fork", "step_number": 21}, agent_output={"code": "y = 2\n" * 4000}
                )
            gc.collect()
            tracemalloc.start()
            db.export_data(tmp_path / f"{fmt}-{count}", fmt)
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            peaks.append(peak - current)
    assert peaks[1] < peaks[0] * 1.5 + 2 * 1024 * 1024, f"{fmt}: transient peak grew from {peaks[0]:,} to {peaks[1]:,}"
