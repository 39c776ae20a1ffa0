"""``fle-db retention show|apply``: the retention policy (``FLE_DB_RETENTION``), for cron."""

from __future__ import annotations

import click

from ..config import Settings
from ..retention import parse
from ._common import Options, echo_json, iec_bytes, json_option, open_client, print_table
from .maintenance import thin_rows

_POLICY = click.option("--policy", metavar="TEXT", help="This policy instead of FLE_DB_RETENTION.")


@click.group()
def retention() -> None:
    """The retention policy: e.g. FLE_DB_RETENTION="thin states older than 30 days to every 10th;
    delete trajectories older than 180 days except the best 5 per task". Automated backups apply
    it; from cron: `fle-db retention apply --yes`.
    """


@retention.command("show")
@_POLICY
@json_option
@click.pass_obj
def retention_show(options: Options, policy: str | None) -> None:
    """Show the policy as parsed (its canonical text and rules); no database is opened."""
    found = Settings.resolve(options.url).retention if policy is None else parse(policy, "--policy")
    result = {
        "policy": found.text if found else None,
        "thin": {"older_than_days": found.thin.older_than.total_seconds() / 86400, "keep_every": found.thin.keep_every}
        if found and found.thin
        else None,
        "delete": {
            "older_than_days": found.delete.older_than.total_seconds() / 86400,
            "keep_best_per_task": found.delete.keep_best_per_task,
        }
        if found and found.delete
        else None,
    }
    if options.json:
        echo_json(result)
        return
    print_table("fle-db retention", [("policy", found.text if found else "none (set FLE_DB_RETENTION)")])


@retention.command("apply")
@_POLICY
@click.option("--yes", is_flag=True, help="Really apply it; without it this is a dry run.")
@json_option
@click.pass_obj
def retention_apply(options: Options, policy: str | None, yes: bool) -> None:
    """Apply the policy: delete (lineage-aware, as cleanup), then thin (as thin). A dry run unless --yes."""
    with open_client(options, writes=True) as client:
        result = client.apply_retention(policy, dry_run=not yes)
    if options.json:
        echo_json(result)
        return
    rows = [("policy", result["policy"])]
    if result["delete"] is not None:
        deleted = result["delete"]
        rows.append(("deleted", f"{len(deleted['trajectories'])}: {', '.join(deleted['trajectories'][:20]) or '-'}"))
        rows.append(("  bytes freed", iec_bytes(deleted["bytes_freed"])))
        if deleted["kept_for_lineage"]:
            rows.append(("  kept for lineage", ", ".join(deleted["kept_for_lineage"][:20])))
    if result["thin"] is not None:
        rows += [(("thinned " if name == "trajectories" else "  ") + name, value)
                 for name, value in thin_rows(result["thin"])]  # fmt: skip
    print_table("fle-db retention apply" + (" (dry run: pass --yes to apply)" if result["dry_run"] else ""), rows)
