"""``fle-db stats``, ``health``, ``cleanup``, ``optimize``, ``validate``, ``metrics``: looking after a database."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from ..schema import VERSIONED_TABLES
from ._common import EXIT_ERROR, Options, echo_json, iec_bytes, json_option, open_client, print_table

#: The tables that hold what users saved; the others (point-in-time history, the commit log)
#: are fle-db's bookkeeping, shown by ``stats --all``.
USER_TABLES = frozenset(table.name for table in VERSIONED_TABLES)
_COUNTS = ("trajectories", "steps", "game_states", "agent_outputs", "environment_feedbacks", "search_nodes", "blobs")


def _selection_options(command: Any) -> Any:
    """The options selecting trajectories, shared by ``cleanup`` and ``thin`` (as their methods)."""
    options = [
        click.option("--older-than", "older_than_days", type=click.FloatRange(min=0), help="No activity for N days."),
        click.option("--before", help="No activity since this ISO 8601 time (with offset)."),
        click.option("--id", "trajectory_ids", multiple=True, help="Only these trajectory ids (repeatable)."),
        click.option("--task", help="Only trajectories of this task."),
        click.option("--agent", "agent_type", help="Only trajectories of this agent type."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _selection(
    older_than_days: float | None, before: str | None, trajectory_ids: tuple[str, ...], task: str | None,
    agent_type: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The keyword arguments of :func:`_selection_options`' values for ``cleanup`` / ``thin``."""
    return {
        "older_than": older_than_days * 86400 if older_than_days is not None else None,
        "before": before,
        "trajectory_ids": trajectory_ids or None,
        "task": task,
        "agent_type": agent_type,
    }


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Also list fle-db's internal tables (history, commit log).")
@json_option
@click.pass_obj
def stats(options: Options, show_all: bool) -> None:
    """Show what the database holds: counts, sizes per table, game-state compression, step times."""
    with open_client(options, writes=False) as client:
        result = client.get_statistics()
    if options.json:
        echo_json(result)
        return
    state_bytes = result["game_state_bytes"]
    ratio = state_bytes["ratio"]
    estimate = "" if result["exact_counts"] else " (estimate)"
    rows = [(key.replace("_", " "), f"{result[key]:,}{estimate}") for key in _COUNTS if key in result]
    rows.append(("size", iec_bytes(result["size"])))
    tables = sorted(result["tables"].items(), key=lambda kv: -kv[1])
    rows += [(f"  {table}", iec_bytes(size)) for table, size in tables if show_all or table in USER_TABLES]
    hidden = sum(size for table, size in tables if table not in USER_TABLES)
    if not show_all and hidden:
        rows.append(("  internal tables", f"{iec_bytes(hidden)} (history, commit log: --all lists them)"))
    rows.append(
        (
            "state compression",
            f"{iec_bytes(state_bytes['stored'])} stored for {iec_bytes(state_bytes['raw'])} of JSON"
            + (f" ({ratio:.1%})" if ratio is not None else ""),
        )
    )
    rows += [("oldest step", result["oldest_step_at"] or "-"), ("newest step", result["newest_step_at"] or "-")]
    print_table(f"fle-db statistics ({result['backend']})", rows)


@click.command()
@json_option
@click.pass_obj
def health(options: Options) -> None:
    """Check the database: connectivity, schema, a write probe (leaves no trace), disk and WAL
    (SQLite), connection limits and replication (PostgreSQL). Exit code 1 when failing."""
    with open_client(options, writes=False, auto_migrate=False) as client:  # the probe leaves no trace
        result = client.health_check()
    if options.json:
        echo_json(result)
    else:
        rows = [("status", result["status"])]
        rows += [(name, f"{check['status']}: {check['detail']}") for name, check in result["checks"].items()]
        print_table(f"fle-db health ({result['backend']})", rows)
    if result["status"] == "failing":
        raise SystemExit(EXIT_ERROR)


@click.command()
@_selection_options
@click.option("--keep-best", "keep_best_per_task", type=click.IntRange(min=0), help="Keep the N best per task.")
@click.option("--yes", is_flag=True, help="Really delete; without it this is a dry run.")
@json_option
@click.pass_obj
def cleanup(
    options: Options,
    older_than_days: float | None,
    before: str | None,
    trajectory_ids: tuple[str, ...],
    task: str | None,
    agent_type: str | None,
    keep_best_per_task: int | None,
    yes: bool,
) -> None:
    """Delete trajectories matching every option given, lineage-aware (a trajectory a kept fork
    descends from is kept). A dry run unless --yes: it reports what would go and the bytes freed."""
    with open_client(options, writes=True) as client:
        report = client.cleanup(
            **_selection(older_than_days, before, trajectory_ids, task, agent_type),
            keep_best_per_task=keep_best_per_task,
            dry_run=not yes,
        )
    if options.json:
        echo_json(report)
        return
    verb = "would delete" if report["dry_run"] else "deleted"
    rows = [(verb, f"{len(report['trajectories'])} trajectories: {', '.join(report['trajectories'][:20]) or '-'}")]
    rows += [(f"  {table}", f"{n:,}") for table, n in report["rows"].items() if n]
    rows.append(("bytes freed", iec_bytes(report["bytes_freed"])))
    if report["kept_for_lineage"]:
        rows.append(("kept for lineage", ", ".join(report["kept_for_lineage"][:20])))
    print_table("fle-db cleanup" + (" (dry run: pass --yes to delete)" if report["dry_run"] else ""), rows)


@click.command()
@click.option("--vacuum", is_flag=True, help="Also return free space to the filesystem (rewrites the database).")
@click.option("--reindex", is_flag=True, help="Also rebuild the indexes.")
@json_option
@click.pass_obj
def optimize(options: Options, vacuum: bool, reindex: bool) -> None:
    """Run the backend's maintenance (ANALYZE; SQLite WAL checkpoint; optionally VACUUM, REINDEX)."""
    with open_client(options, writes=True) as client:
        report = client.optimize(vacuum=vacuum, reindex=reindex)
    if options.json:
        echo_json(report)
        return
    rows = [(action["action"], f"{action['ms']:,.1f} ms") for action in report["actions"]]
    rows.append(("size", f"{iec_bytes(report['size_before'])} -> {iec_bytes(report['size_after'])}"))
    print_table("fle-db optimize", rows)


@click.command()
@json_option
@click.pass_obj
def validate(options: Options) -> None:
    """Check everything (structure, checksums, states, records, lineage, numbering). Exit code 1
    when a problem is an error."""
    console = Console(stderr=True)
    with (
        open_client(options, writes=False, auto_migrate=False) as client,
        console.status("validating...") as status,
    ):
        report = client.validate(progress=lambda stage, done: status.update(f"validating {stage}: {done:,}"))
    if options.json:
        echo_json(report)
    else:
        rows = [("result", "ok" if report["ok"] else "PROBLEMS FOUND")]
        rows += [(f"checked {name}", f"{n:,}") for name, n in report["checked"].items()]
        rows += [(f"{p['severity']}: {p['kind']}", f"{p['where']}: {p['detail']}") for p in report["problems"][:50]]
        print_table("fle-db validate", rows)
    if not report["ok"]:
        raise SystemExit(EXIT_ERROR)


@click.command()
@json_option
@click.pass_obj
def metrics(options: Options) -> None:
    """Probe the database (a health check and the statistics) and show the latencies measured
    and the connection pool: a quick look at how fast it answers now."""
    with open_client(options, writes=False, auto_migrate=False) as client:
        client.health_check()
        client.get_statistics()
        result: dict[str, Any] = client.get_performance_metrics()
    if options.json:
        echo_json(result)
        return
    rows = [
        (name, f"{op['count']} calls, p50 {op['p50_ms']:.2f} ms, p99 {op['p99_ms']:.2f} ms")
        for name, op in result["operations"].items()
    ]
    rows.append(
        ("pool", f"{result['pool']['in_use']} in use, {result['pool']['idle']} idle, max {result['pool']['max']}")
    )
    print_table("fle-db metrics", rows)


@click.command()
@_selection_options
@click.option("--keep-every", type=click.IntRange(min=1), default=10, show_default=True, help="Keep every Nth state.")
@click.option("--thin-search-nodes", is_flag=True, help="Also thin search nodes, keeping the best per depth.")
@click.option("--keep-best-per-depth", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --thin-search-nodes: search nodes kept per depth of each tree.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Only report what would go (the default without --yes).")
@click.option("--yes", is_flag=True, help="Really drop the states; without it this is a dry run.")
@json_option
@click.pass_obj
def thin(
    options: Options,
    older_than_days: float | None,
    before: str | None,
    trajectory_ids: tuple[str, ...],
    task: str | None,
    agent_type: str | None,
    keep_every: int,
    thin_search_nodes: bool,
    keep_best_per_depth: int,
    dry_run: bool,
    yes: bool,
) -> None:
    """Drop the game states of old steps nothing resumes from, in the trajectories matching every
    option given (as cleanup selects them), keeping every step's records, the latest step, fork
    points, search nodes and every Nth state. A dry run unless --yes."""
    if dry_run and yes:
        raise click.UsageError("--dry-run and --yes contradict each other")
    with open_client(options, writes=True) as client:
        result = client.thin(
            **_selection(older_than_days, before, trajectory_ids, task, agent_type),
            keep_every=keep_every,
            keep_best_per_depth=keep_best_per_depth,
            thin_search_nodes=thin_search_nodes,
            dry_run=not yes,
        )
    if options.json:
        echo_json(result)
        return
    print_table("fle-db thin" + (" (dry run: pass --yes to thin)" if result["dry_run"] else ""), thin_rows(result))


def thin_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The table rows of a thin report (shared with ``retention apply``)."""
    shown = ", ".join(result["trajectories"][:20]) or "-"
    return [
        ("trajectories", f"{len(result['trajectories'])}: {shown}"),
        ("states dropped", f"{result['game_states']:,} ({result['steps_thinned']:,} steps)"),
        ("blobs", f"{result['blobs_deleted']:,} deleted, {result['blobs_reencoded']:,} re-encoded"),
        ("bytes freed", f"{iec_bytes(result['bytes_freed'])} once history is pruned (optimize)"),
        ("bytes freed now", f"{result['bytes_freed_now']:,} (the dropped rows stay restorable until pruned)"),
    ]
