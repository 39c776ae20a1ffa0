"""``AsyncDatabaseClient``: :class:`~fle_db.DatabaseClient` for asyncio programs.

Every public method of ``DatabaseClient`` is here as a coroutine with the same parameters,
return value and errors (a test compares their signatures)::

    async with AsyncDatabaseClient("postgresql://user:pw@host/db") as db:
        await db.save_step({"trajectory_id": "run-1", "step_number": 0, "action": "craft()"}, game_state=state)
        latest = await db.load_latest_checkpoint("run-1")

Where a call runs is :mod:`fle_db.aio._runner`'s business: on PostgreSQL natively on the event
loop over psycopg's async connections (the synchronous code path, through SQLAlchemy's greenlet
bridge: same statements, encoding, retries and typed errors), the bulk and file work on a worker
thread; on SQLite, a step's calls on the event loop itself (one per turn of the loop, never
waiting for a lock) and the rest on the client's worker thread; on MySQL/MariaDB and custom
backends on the client's worker threads. The constructor checks the settings
(``ConfigurationError`` at once) but touches no database: the client connects and migrates on
``async with`` or on the first call.

What differs, by nature: ``close()`` is a coroutine; ``backup_scheduler()`` gives an
:class:`~fle_db.aio.AsyncBackupScheduler` (``await run_once()``, ``start()``, ``await stop()``);
``progress`` callbacks of exports, imports, validation and copies are called from the worker thread;
``tail()`` is an async generator (``async for item in db.tail(...)``), whose arguments are checked
when the first item is asked for, and whose rounds run on a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Unpack

from .. import models
from ..client import DatabaseClient
from ..config import Options, Settings
from ..tail import AsyncTail, follower
from ._runner import AsyncBackupScheduler, Runner


class AsyncDatabaseClient:
    """:class:`~fle_db.DatabaseClient`'s methods as coroutines (each documented there; its
    docstring is copied here). Settings as ``DatabaseClient`` takes them.

    Raises:
        ConfigurationError: a setting is missing or invalid (at construction).
    """

    def __init__(self, url: str | None = None, **options: Unpack[Options]) -> None:
        self._settings = Settings.resolve(url, **options)
        self._runner = Runner(url, options, self._settings)
        self._native = self._runner.call
        self._offload = self._runner.offload

    @property
    def settings(self) -> Settings:
        """The resolved settings (their ``repr`` hides the password)."""
        return self._settings

    async def __aenter__(self) -> AsyncDatabaseClient:
        await self._runner.main()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncDatabaseClient({self._settings.safe_url()!r})"

    async def close(self) -> None:
        """Stop automated backups (waiting for one in progress) and release every connection.
        Idempotent. Afterwards every call raises :class:`~fle_db.errors.ClientClosedError`."""
        await self._runner.close()

    async def backup_scheduler(self, interval: float, keep: int) -> AsyncBackupScheduler:
        """A scheduler of automated backups (not started), as :meth:`DatabaseClient.backup_scheduler
        <fle_db.DatabaseClient.backup_scheduler>` gives it, for asyncio code: ``await run_once()``,
        ``start()`` (a daemon thread with the worker client's connections), ``await stop()``.

        Raises:
            ConfigurationError: ``interval`` not > 0 seconds or ``keep`` not an integer >= 1.
        """
        return AsyncBackupScheduler((await self._runner.worker()).backup_scheduler(interval, keep))

    async def get_performance_metrics(self) -> dict[str, Any]:
        """As :meth:`DatabaseClient.get_performance_metrics <fle_db.DatabaseClient.get_performance_metrics>`:
        every call of this client, wherever it ran, in one set of metrics; the pool is the one of
        the everyday calls. Opens the client if it is not open yet."""
        return (await self._runner.main()).get_performance_metrics()

    # -- the rest, in alphabetical order ---------------------------------------------------
    async def allocate_version(self, description: str | None = None, model: str | None = None) -> int:
        return await self._native(DatabaseClient.allocate_version, description, model)

    async def append_step(
        self,
        trajectory_id: str,
        step: Mapping[str, Any] | None = None,
        *,
        agent_output: Mapping[str, Any] | None = None,
        environment_feedback: Mapping[str, Any] | None = None,
        game_state: Mapping[str, Any] | None = None,
        node: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await self._native(
            DatabaseClient.append_step,
            trajectory_id,
            step,
            agent_output=agent_output,
            environment_feedback=environment_feedback,
            game_state=game_state,
            node=node,
        )

    async def batch_save_steps(self, steps: Iterable[Mapping[str, Any] | models.Step]) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.batch_save_steps, steps)

    async def cleanup(
        self,
        older_than: timedelta | float | None = None,
        *,
        before: datetime | str | float | None = None,
        trajectory_ids: Iterable[str] | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        keep_best_per_task: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        return await self._native(
            DatabaseClient.cleanup,
            older_than,
            before=before,
            trajectory_ids=trajectory_ids,
            task=task,
            agent_type=agent_type,
            keep_best_per_task=keep_best_per_task,
            dry_run=dry_run,
        )

    async def copy_to(self, target: str, progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
        return await self._offload(DatabaseClient.copy_to, target, progress)

    async def create_backup(self) -> str:
        return await self._offload(DatabaseClient.create_backup)

    async def delete_trajectory(self, trajectory_id: str, *, cascade: bool = False) -> list[str]:
        return await self._native(DatabaseClient.delete_trajectory, trajectory_id, cascade=cascade)

    async def execute_query(self, query: str, params: Sequence[Any] | None = None) -> list[dict[str, Any]]:
        return await self._offload(DatabaseClient.execute_query, query, params)

    async def export_data(
        self,
        path: str | os.PathLike[str],
        format: str = "jsonl",
        *,
        trajectory_ids: Iterable[str] | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        success: bool | None = None,
        min_total_reward: float | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        return await self._offload(
            DatabaseClient.export_data,
            path,
            format,
            trajectory_ids=trajectory_ids,
            task=task,
            agent_type=agent_type,
            since=since,
            until=until,
            success=success,
            min_total_reward=min_total_reward,
            progress=progress,
        )

    async def fork_trajectory(
        self, parent_trajectory_id: str, parent_step_number: int, trajectory_id: str | None = None, **fields: Any
    ) -> str:
        # (a lambda: mypy cannot match the mixin's ``self`` beside ``**fields``)
        return await self._native(
            lambda db: db.fork_trajectory(parent_trajectory_id, parent_step_number, trajectory_id, **fields)
        )

    async def get_best_per_depth(self, tree: str, n: int = 1, *, with_state: bool = False) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.get_best_per_depth, tree, n, with_state=with_state)

    async def get_children(self, trajectory_id: str, step_number: int) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.get_children, trajectory_id, step_number)

    async def get_lineage(self, trajectory_id: str, step_number: int) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.get_lineage, trajectory_id, step_number)

    async def get_migration_status(self) -> dict[str, Any]:
        return await self._native(DatabaseClient.get_migration_status)

    async def get_node_values(self, tree: str | None = None, *, tree_prefix: str | None = None) -> list[float]:
        return await self._native(DatabaseClient.get_node_values, tree, tree_prefix=tree_prefix)

    async def get_search_node(
        self, node_id: int | None = None, *, trajectory_id: str | None = None, step_number: int | None = None
    ) -> dict[str, Any]:
        return await self._native(
            DatabaseClient.get_search_node, node_id, trajectory_id=trajectory_id, step_number=step_number
        )

    async def get_search_nodes(
        self,
        tree: str,
        *,
        order: str = "value",
        limit: int | None = None,
        with_state: bool = False,
        with_value: bool = False,
        with_advantage: bool = False,
        trajectory_id: str | None = None,
    ) -> list[dict[str, Any]]:
        return await self._native(
            DatabaseClient.get_search_nodes,
            tree,
            order=order,
            limit=limit,
            with_state=with_state,
            with_value=with_value,
            with_advantage=with_advantage,
            trajectory_id=trajectory_id,
        )

    async def get_statistics(self) -> dict[str, Any]:
        return await self._native(DatabaseClient.get_statistics)

    async def get_tree_summary(self, tree: str) -> dict[str, Any]:
        return await self._native(DatabaseClient.get_tree_summary, tree)

    async def get_version(self, version: int | None = None) -> dict[str, Any] | None:
        return await self._native(DatabaseClient.get_version, version)

    async def health_check(self) -> dict[str, Any]:
        return await self._native(DatabaseClient.health_check)

    async def import_data(
        self, path: str | os.PathLike[str], *, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        return await self._offload(DatabaseClient.import_data, path, progress=progress)

    async def list_backups(self) -> list[dict[str, Any]]:
        return await self._offload(DatabaseClient.list_backups)

    async def list_trajectories(
        self,
        *,
        task: str | None = None,
        agent_type: str | None = None,
        success: bool | None = None,
        since: datetime | str | float | None = None,
        until: datetime | str | float | None = None,
        id_contains: str | None = None,
        parent_trajectory_id: str | None = None,
        order_by: str = "start_time",
        descending: bool = True,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        return await self._native(
            DatabaseClient.list_trajectories,
            task=task,
            agent_type=agent_type,
            success=success,
            since=since,
            until=until,
            id_contains=id_contains,
            parent_trajectory_id=parent_trajectory_id,
            order_by=order_by,
            descending=descending,
            limit=limit,
            cursor=cursor,
        )

    async def load_agent_outputs(self, trajectory_id: str) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.load_agent_outputs, trajectory_id)

    async def load_checkpoint(self, trajectory_id: str, step_number: int) -> dict[str, Any]:
        return await self._native(DatabaseClient.load_checkpoint, trajectory_id, step_number)

    async def load_environment_feedbacks(self, trajectory_id: str) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.load_environment_feedbacks, trajectory_id)

    async def load_game_state(self, state_id: str) -> dict[str, Any]:
        return await self._native(DatabaseClient.load_game_state, state_id)

    async def load_game_states(self, state_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        return await self._native(DatabaseClient.load_game_states, state_ids)

    async def load_latest_checkpoint(self, trajectory_id: str) -> dict[str, Any] | None:
        return await self._native(DatabaseClient.load_latest_checkpoint, trajectory_id)

    async def load_metadata(self, trajectory_id: str) -> dict[str, Any]:
        return await self._native(DatabaseClient.load_metadata, trajectory_id)

    async def load_step(self, trajectory_id: str, step_number: int) -> dict[str, Any]:
        return await self._native(DatabaseClient.load_step, trajectory_id, step_number)

    async def load_steps(self, trajectory_id: str, *, with_parts: bool = False) -> list[dict[str, Any]]:
        return await self._native(DatabaseClient.load_steps, trajectory_id, with_parts=with_parts)

    async def load_trajectory(self, trajectory_id: str) -> dict[str, Any]:
        return await self._native(DatabaseClient.load_trajectory, trajectory_id)

    async def migrate(self) -> list[str]:
        return await self._native(DatabaseClient.migrate)

    async def optimize(self, *, vacuum: bool = False, reindex: bool = False) -> dict[str, Any]:
        return await self._offload(DatabaseClient.optimize, vacuum=vacuum, reindex=reindex)

    async def prune_backups(self, keep: int | None = None, older_than: float | None = None) -> list[str]:
        return await self._offload(DatabaseClient.prune_backups, keep, older_than)

    async def recovery_window(self) -> dict[str, Any]:
        return await self._native(DatabaseClient.recovery_window)

    async def register_version(self, version: int, description: str | None = None, model: str | None = None) -> None:
        return await self._native(DatabaseClient.register_version, version, description, model)

    async def restore_backup(self, backup_id: str, target: str | None = None) -> dict[str, Any]:
        return await self._offload(DatabaseClient.restore_backup, backup_id, target)

    async def restore_to(self, timestamp: datetime | str | float, target: str | None = None) -> dict[str, Any]:
        return await self._offload(DatabaseClient.restore_to, timestamp, target)

    async def save_agent_output(self, output: Mapping[str, Any] | models.AgentOutput) -> dict[str, Any]:
        return await self._native(DatabaseClient.save_agent_output, output)

    async def save_environment_feedback(
        self, feedback: Mapping[str, Any] | models.EnvironmentFeedback
    ) -> dict[str, Any]:
        return await self._native(DatabaseClient.save_environment_feedback, feedback)

    async def save_game_state(self, state: Mapping[str, Any]) -> str:
        return await self._native(DatabaseClient.save_game_state, state)

    async def save_metadata(self, trajectory_id: str, key: str, value: Any) -> None:
        return await self._native(DatabaseClient.save_metadata, trajectory_id, key, value)

    async def save_step(
        self,
        step: Mapping[str, Any] | models.Step,
        *,
        agent_output: Mapping[str, Any] | None = None,
        environment_feedback: Mapping[str, Any] | None = None,
        game_state: Mapping[str, Any] | None = None,
        node: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        return await self._native(
            DatabaseClient.save_step,
            step,
            agent_output=agent_output,
            environment_feedback=environment_feedback,
            game_state=game_state,
            node=node,
        )

    async def save_trajectory(self, trajectory: Mapping[str, Any] | models.Trajectory) -> str:
        return await self._native(DatabaseClient.save_trajectory, trajectory)

    async def update_search_stats(
        self,
        node_id: int,
        *,
        add_visits: int = 0,
        add_value: float = 0.0,
        value: float | None = None,
        advantage: float | None = None,
        visits: int | None = None,
    ) -> dict[str, Any]:
        return await self._native(
            DatabaseClient.update_search_stats,
            node_id,
            add_visits=add_visits,
            add_value=add_value,
            value=value,
            advantage=advantage,
            visits=visits,
        )

    async def thin(
        self,
        *,
        trajectory_ids: Iterable[str] | None = None,
        older_than: timedelta | float | None = None,
        before: datetime | str | float | None = None,
        task: str | None = None,
        agent_type: str | None = None,
        keep_every: int = 10,
        keep_best_per_depth: int = 1,
        thin_search_nodes: bool = False,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        return await self._offload(
            DatabaseClient.thin,
            trajectory_ids=trajectory_ids,
            older_than=older_than,
            before=before,
            task=task,
            agent_type=agent_type,
            keep_every=keep_every,
            keep_best_per_depth=keep_best_per_depth,
            thin_search_nodes=thin_search_nodes,
            dry_run=dry_run,
        )

    async def apply_retention(self, policy: str | None = None, *, dry_run: bool = False) -> dict[str, Any]:
        return await self._offload(DatabaseClient.apply_retention, policy, dry_run=dry_run)

    async def tail(
        self,
        trajectory_ids: Sequence[str] | None = None,
        task: str | None = None,
        cursor: str | None = None,
        *,
        with_parts: bool = False,
        poll_interval: float = 0.25,
        timeout: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        client = await self._runner.worker()
        found = follower(
            client._backend,
            client._records,
            client._metrics,
            trajectory_ids,
            task,
            cursor,
            with_parts,
            poll_interval,
            timeout,
        )
        async with AsyncTail(found) as tail:
            async for item in tail:
                yield item

    async def validate(self, progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
        return await self._offload(DatabaseClient.validate, progress)

    async def verify_backup(self, backup_id: str) -> dict[str, Any]:
        return await self._offload(DatabaseClient.verify_backup, backup_id)

    async def visit_search_node(self, node_id: int, children: int = 1) -> dict[str, Any]:
        return await self._native(DatabaseClient.visit_search_node, node_id, children)


for _name, _method in list(vars(AsyncDatabaseClient).items()):
    if not _name.startswith("_") and callable(_method) and _method.__doc__ is None:
        _method.__doc__ = getattr(DatabaseClient, _name).__doc__
