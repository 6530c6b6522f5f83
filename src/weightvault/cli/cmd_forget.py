"""``weightvault forget``: remove snapshots by retention policy or by id (data stays until prune)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from weightvault import api
from weightvault.cli.common import Globals, open_repository, pass_globals, percent
from weightvault.cli.output import display, echo_json, human_time, print_table, prune_json, prune_lines

__all__ = ["forget"]


def _snap_json(s: api.Snapshot, reasons: list[str] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"id": s.id, "short_id": s.short_id, "time": s.time, "host": s.host, "paths": s.paths,
                         "tags": s.tags}
    if reasons is not None:
        d["reasons"] = reasons
    return d


F = TypeVar("F", bound=Callable[..., Any])


def _count(name: str, what: str) -> Callable[[F], F]:
    return click.option(name, type=click.IntRange(0), default=0, metavar="N", help=what)


@click.command()
@click.argument("snapshots", nargs=-1)
@_count("--keep-last", "Keep the N newest snapshots.")
@_count("--keep-hourly", "Keep the newest of each of the N most recent hours.")
@_count("--keep-daily", "Keep the newest of each of the N most recent days.")
@_count("--keep-weekly", "Keep the newest of each of the N most recent ISO weeks.")
@_count("--keep-monthly", "Keep the newest of each of the N most recent months.")
@_count("--keep-yearly", "Keep the newest of each of the N most recent years.")
@click.option("--keep-within", metavar="DURATION", help="Keep every snapshot newer than DURATION ago (30d, 12h, 1y6m).")
@click.option("--keep-tag", "keep_tags", multiple=True, metavar="K=V", help="Keep every snapshot with this tag.")
@click.option("--group-by", default="host,paths", show_default=True, metavar="FIELDS",
              help="Decide per group of snapshots with equal FIELDS (host,paths,tags; '' for one group).")
@click.option("--prune", "and_prune", is_flag=True, help="Prune right after: delete the data nothing needs any more.")
@click.option("--max-unused", default="10%", show_default=True, metavar="PCT",
              help="With --prune: repack a pack when more than PCT of it is unused.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be removed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
@pass_globals
def forget(
    g: Globals, snapshots: tuple[str, ...], keep_last: int, keep_hourly: int, keep_daily: int, keep_weekly: int,
    keep_monthly: int, keep_yearly: int, keep_within: str | None, keep_tags: tuple[str, ...], group_by: str,
    and_prune: bool, max_unused: str, dry_run: bool, as_json: bool,
) -> None:
    """Remove SNAPSHOT... and/or every snapshot no --keep-* rule keeps, printing why each kept one is
    kept. Only snapshot records are removed; their data stays until prune (or use --prune). The
    ranks of a sharded group go with their group snapshot."""
    repo = open_repository(g)
    fields = tuple(f.strip() for f in group_by.split(",") if f.strip())
    res = repo.forget(
        snapshots, keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly, keep_within=keep_within, keep_tags=keep_tags,
        group_by=fields, dry_run=dry_run, prune=and_prune, max_unused=percent(max_unused, "--max-unused"),
    )
    if as_json:
        echo_json({
            "dry_run": res.dry_run,
            "groups": [
                {"key": {k: list(v) if isinstance(v, tuple) else v for k, v in grp.key.items()},
                 "ordered_by": grp.ordered_by,
                 "keep": [_snap_json(d.snapshot, d.reasons) for d in grp.keep],
                 "remove": [_snap_json(s) for s in grp.remove]}
                for grp in res.groups
            ],
            "removed": [_snap_json(s) for s in res.removed],
            "removed_ids": res.removed_ids,
            "prune": None if res.prune is None else prune_json(res.prune),
        })
        return
    for grp in res.groups if not g.quiet else []:
        key = ", ".join(f"{k} {display(' '.join(v) if isinstance(v, tuple) else str(v))}" for k, v in grp.key.items())
        click.echo(f"group: {key or 'all snapshots'} (ordered by {grp.ordered_by})")
        rows = [[d.snapshot.short_id, human_time(d.snapshot.time), display(",".join(d.snapshot.tags)),
                 "keep" if d.keep else "remove", display("; ".join(d.reasons))] for d in grp.decisions]
        print_table(["ID", "Time", "Tags", "Action", "Reasons"], rows)
    verb = "would remove" if res.dry_run else "removed"
    if not g.quiet:
        extra = len(res.removed_ids) - len(res.removed)
        more = f" (and {extra} rank snapshot(s) of their groups)" if extra > 0 else ""
        if res.prune is None:
            click.echo(f"{verb} {len(res.removed)} snapshot(s){more}; data stays until prune")
        else:
            click.echo(f"{verb} {len(res.removed)} snapshot(s){more}")
            for line in prune_lines(res.prune):
                click.echo(line)
