"""Reading trajectories for export with bounded memory: pages of step numbers chosen by bytes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...backends.base import NodeQuery, SearchStore, StoredStep
from ...errors import DataIntegrityError
from ...storage.records import iter_records
from .chat import NodeStats
from .common import Checkpoint

if TYPE_CHECKING:
    from ...client import DatabaseClient

#: A page of step numbers: at most this many, holding at most _PAGE_BYTES of stored records
#: (always at least one number, whatever its size).
_PAGE_STEPS = 1024
_PAGE_BYTES = 4 * 1024 * 1024
#: Game states read at once: at most this many raw bytes (always at least one state).
_STATE_BYTES = 4 * 1024 * 1024


def read_trajectory(
    client: DatabaseClient, tid: str, with_states: bool
) -> tuple[dict[str, Any], dict[str, Any], Iterator[Checkpoint]]:
    """A trajectory, its metadata and its checkpoints in step order (see :func:`read_checkpoints`)."""
    return client.load_trajectory(tid), client.load_metadata(tid), read_checkpoints(client, tid, with_states)


def read_checkpoints(
    client: DatabaseClient, tid: str, with_states: bool, first: int = 0, last: int | None = None
) -> Iterator[Checkpoint]:
    """The checkpoints numbered ``first`` .. ``last`` (inclusive; None: to the end) of a
    trajectory in step order, read as they are consumed so that memory is bounded by bytes,
    whatever the data: records in pages of step numbers holding at most :data:`_PAGE_BYTES`
    stored (decoded one checkpoint at a time), game states in batches of at most
    :data:`_STATE_BYTES` raw (one at a time when larger)."""
    after: int | None = first - 1 if first > 0 else None
    more = True
    while more:
        page = client._backend.load_step_page(tid, after, _PAGE_STEPS, _PAGE_BYTES)
        records = [page.steps, page.agent_outputs, page.environment_feedbacks]
        numbers = sorted({row.step_number for rows in records for row in rows})
        for cp in _page(client, tid, numbers, records, with_states):
            if last is not None and cp.step_number > last:
                return
            yield cp
        after, more = (numbers[-1], page.more) if numbers else (after, False)


def node_stats(client: DatabaseClient) -> NodeStats:
    """``{step_number: (value, advantage)}`` of a trajectory's search nodes (one query; empty on
    a backend without search trees)."""
    search = client._backend if isinstance(client._backend, SearchStore) else None

    def stats(tid: str) -> dict[int, tuple[float | None, float | None]]:
        if search is None:
            return {}
        nodes = search.find_nodes(NodeQuery(None, order="step", trajectory_id=tid))
        return {node.step_number: (node.value, node.advantage) for node in nodes}

    return stats


def _page(
    client: DatabaseClient, tid: str, numbers: list[int], records: list[list[StoredStep]], with_states: bool
) -> Iterator[Checkpoint]:
    """The checkpoints ``numbers`` of a page; each record is decoded as it is yielded."""
    state_of = {row.step_number: row.game_state_id for row in records[0] if row.game_state_id} if with_states else {}
    sizes = client._backend.game_state_sizes(list(dict.fromkeys(state_of.values()))) if state_of else {}
    steps, outputs, feedbacks = (_Ahead(rows, iter_records(client._records.decoder, rows)) for rows in records)
    states: dict[str, dict[str, Any]] = {}
    for index, number in enumerate(numbers):
        state_id = state_of.get(number)
        if state_id is not None and state_id not in states:
            states = {}  # the previous batch goes before the next is read
            batch = _state_batch(numbers, index, state_of, sizes)
            stored = client._backend.load_game_states(batch)
            if len(stored) < len(batch):
                missing = [sid for sid in batch if sid not in stored]
                raise DataIntegrityError(f"trajectory {tid!r} names game state(s) {missing[:5]}, which are missing")
            # A thinned state is left out: its checkpoint is exported with game_state None.
            states = client._records.states(stored.values(), skip_thinned=True)
        step, output, feedback = steps.take(number), outputs.take(number), feedbacks.take(number)
        yield Checkpoint(
            number,
            {"trajectory_id": tid, "step_number": number, **step[1], "game_state_id": step[0].game_state_id}
            if step is not None
            else None,
            {"trajectory_id": tid, "step_number": number, **output[1]} if output is not None else None,
            {"trajectory_id": tid, "step_number": number, **feedback[1]} if feedback is not None else None,
            states.get(state_id) if state_id else None,
        )


def _state_batch(numbers: list[int], start: int, state_of: dict[int, str], sizes: dict[str, int]) -> list[str]:
    """The distinct states of ``numbers[start:]``, in order, while their raw sizes sum to at most
    :data:`_STATE_BYTES` (always the first)."""
    batch: dict[str, None] = {}
    total = 0
    for number in itertools.islice(numbers, start, None):
        state_id = state_of.get(number)
        if state_id is None or state_id in batch:
            continue
        total += sizes.get(state_id, 0)
        if batch and total > _STATE_BYTES:
            break
        batch[state_id] = None
    return list(batch)


class _Ahead:
    """The decoded records of one table, taken by step number in ascending order."""

    def __init__(self, rows: list[StoredStep], values: Iterator[Any]) -> None:
        self._pairs = zip(rows, values, strict=True)
        self._next = next(self._pairs, None)

    def take(self, number: int) -> tuple[StoredStep, Any] | None:
        """The row numbered ``number`` and its value, or None when the table has none."""
        pair = self._next
        if pair is None or pair[0].step_number != number:
            return None
        self._next = next(self._pairs, None)
        return pair
