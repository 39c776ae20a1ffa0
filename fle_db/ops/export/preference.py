"""The ``preference`` export format: pairs of sibling continuations ranked by value (not importable).

TRL's conversational preference layout (``prompt`` / ``chosen`` / ``rejected``, each a list of
``{"role", "content"}`` messages; huggingface.co/docs/trl "Dataset formats", type *preference*,
format *conversational*). One line per step of a selected trajectory that has two or more
continuations, its children as :meth:`~fle_db.DatabaseClient.get_children` defines them (the
trajectory's own next step, forks' first steps, steps naming it as their explicit parent):

* ``prompt``: the branching step's trajectory's ``system_prompt`` and ``task`` messages, then the
  ``assistant`` / ``user`` turns (as in ``chat``) of every step of its lineage
  (:meth:`~fle_db.DatabaseClient.get_lineage`), root first, the branching step included;
* ``chosen`` / ``rejected``: ``[{"role": "assistant", "content": <code>}]``, the first assistant
  turn (the agent's code) of the continuation with the highest / lowest value;
* ``chosen_value`` / ``rejected_value``: those values. A continuation's value is its search
  node's ``value`` when it is a search node with a value, else the ``total_reward`` of the
  trajectory it belongs to; continuations with neither, or without code, take no part;
* ``source``: ``{"trajectory_id", "step_number"}`` of the branching step, and ``chosen`` /
  ``rejected``: ``{"trajectory_id", "step_number"}`` of each continuation.

A step whose best and worst continuations have equal values is skipped and counted in the
export's ``ties``; ``pairs`` counts the lines written. Continuations may belong to trajectories
the filters do not select. Memory holds one prompt (the next branching step on the same lineage
reuses it and reads only the steps after it) and one step's continuations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...backends.base import SearchStore
from ...validation import is_number
from .chat import opening, step_turns
from .common import Checkpoint, Writable, line
from .reader import read_checkpoints

if TYPE_CHECKING:
    from ...client import DatabaseClient

Step = tuple[str, int]


class PreferenceSink:
    """Writes the ``preference`` format."""

    needs_states = False

    def __init__(self, out: Writable, client: DatabaseClient) -> None:
        self._out = out
        self._client = client
        self._search = client._backend if isinstance(client._backend, SearchStore) else None
        self._path: list[Step] = []  # the lineage whose turns are held, root first
        self._turns: list[list[dict[str, str]]] = []  # the turns of each step of _path
        self.skipped = self.pairs = self.ties = 0

    def add(self, trajectory: dict[str, Any], metadata: dict[str, Any], checkpoints: Iterator[Checkpoint]) -> int:
        """Write the pairs of one trajectory's branching steps; return how many steps branch."""
        tid = trajectory["id"]
        backend = self._client._backend
        branching = 0
        for number in backend.branch_points(tid):
            children = backend.children(tid, number)
            if len(children) < 2:
                continue
            branching += 1
            ranked = sorted(
                (c for c in (self._continuation(step) for step in children) if c is not None),
                key=lambda c: (c[0], c[1]),
            )
            if len(ranked) < 2:
                self.skipped += 1
                continue
            (low, worst, rejected), (high, best, chosen) = ranked[0], ranked[-1]
            if low == high:
                self.ties += 1
                continue
            record = {
                "prompt": opening(trajectory) + self._prompt(tid, number),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "chosen_value": high,
                "rejected_value": low,
                "source": {
                    "trajectory_id": tid,
                    "step_number": number,
                    "chosen": {"trajectory_id": best[0], "step_number": best[1]},
                    "rejected": {"trajectory_id": worst[0], "step_number": worst[1]},
                },
            }
            self._out.write(line(record))
            self.pairs += 1
        return branching

    def _continuation(self, step: Step) -> tuple[float, Step, str] | None:
        """``(value, step, code)`` of a continuation, or None without a value or code."""
        cp = next(read_checkpoints(self._client, step[0], False, step[1], step[1]), None)
        code = step_turns(cp)[0] if cp is not None else None
        node = self._search.load_node(step=step) if self._search is not None else None
        value = node.value if node is not None else None
        if value is None:
            value = self._client.load_trajectory(step[0]).get("total_reward")
        if not code or not is_number(value):
            return None
        return float(value), step, code

    def _prompt(self, tid: str, number: int) -> list[dict[str, str]]:
        """The turns of the lineage of a step, reusing those held for a lineage it extends."""
        path = self._client._backend.lineage(tid, number)
        keep = 0
        while keep < min(len(path), len(self._path)) and path[keep] == self._path[keep]:
            keep += 1
        self._path, self._turns = self._path[:keep], self._turns[:keep]
        start = keep
        while start < len(path):
            run_tid, first = path[start]
            end = start + 1
            while end < len(path) and path[end] == (run_tid, first + end - start):
                end += 1
            for cp in read_checkpoints(self._client, run_tid, False, first, first + end - start - 1):
                code, answer = step_turns(cp)
                self._path.append((run_tid, cp.step_number))
                self._turns.append(
                    [{"role": role, "content": text} for role, text in (("assistant", code), ("user", answer)) if text]
                )
            start = end
        return [turn for turns in self._turns for turn in turns]

    def finish(self, trajectories: int, checkpoints: int) -> dict[str, Any]:
        return {"pairs": self.pairs, "ties": self.ties}
