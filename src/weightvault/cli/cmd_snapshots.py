"""``weightvault snapshots``: list snapshots, oldest first, optionally filtered."""

from __future__ import annotations

import click

from weightvault import api
from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, group_json, human_size, human_time, print_table
from weightvault.errors import IntegrityError

__all__ = ["snapshots"]


@click.command()
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Only snapshots with this tag (all must match).")
@click.option("--path", "paths", multiple=True, metavar="PATH", help="Only snapshots of this source (any may match).")
@click.option("--host", metavar="HOST", help="Only snapshots made on this host.")
@click.option("--groups", "show_groups", is_flag=True,
              help="List sharded-checkpoint groups (complete or not) instead of snapshots.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of snapshots (or groups).")
@pass_globals
def snapshots(
    g: Globals, tags: tuple[str, ...], paths: tuple[str, ...], host: str | None, show_groups: bool, as_json: bool
) -> None:
    """List snapshots (oldest first). The ranks of a sharded group are not listed: the group is, as
    one snapshot, once all its ranks have committed; incomplete groups are named on stderr, and so
    are snapshot files that cannot be read (exit 4; in JSON as {"id", "damaged"})."""
    repo = open_repository(g)
    if show_groups:
        _groups(g, repo.groups(), as_json)
        return
    snaps = repo.snapshots(tags=tags, paths=paths, host=host)
    damaged = repo.unreadable_snapshots()
    incomplete = [grp for grp in repo.groups() if not grp.complete]
    if as_json:
        echo_json([s.to_json() for s in snaps] + [{"id": i, "damaged": why} for i, why in sorted(damaged.items())])
    else:
        _table(g, snaps)
    for i, why in sorted(damaged.items()):
        click.echo(f"error: snapshot {i[:8]} cannot be read (damaged): {display(why)}", err=True)
    for grp in incomplete:
        click.echo(f"warning: group {display(grp.id)} is not restorable ({grp.status()})", err=True)
    if damaged:
        raise IntegrityError(f"{len(damaged)} snapshot file(s) cannot be read",
                             hint="`weightvault check` reports them; `check --repair-from REPLICA` heals them")


def _groups(g: Globals, groups: list[api.Group], as_json: bool) -> None:
    if as_json:
        echo_json([group_json(grp) for grp in groups])
        return
    rows = [
        [display(grp.id), str(grp.world_size if grp.world_size is not None else "?"), str(len(grp.ranks)),
         grp.merged.short_id if grp.merged is not None else "-", display(grp.status())]
        for grp in groups
    ]
    print_table(["Group", "World size", "Ranks", "Snapshot", "State"], rows, right=(1, 2))
    if not g.quiet:
        click.echo(f"{len(groups)} group(s)")


def _table(g: Globals, snaps: list[api.Snapshot]) -> None:
    rows = [
        [
            s.short_id,
            human_time(s.time),
            display(s.host),
            display(",".join(s.tags)),
            str(int(s.summary.get("files", 0))),
            human_size(s.summary.get("bytes", 0)),
            display(" ".join(s.paths)),
        ]
        for s in snaps
    ]
    print_table(["ID", "Time", "Host", "Tags", "Files", "Size", "Paths"], rows, right=(4, 5))
    if not g.quiet:
        click.echo(f"{len(snaps)} snapshot(s)")
