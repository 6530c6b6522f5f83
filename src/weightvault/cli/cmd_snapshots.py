"""``weightvault snapshots``: list snapshots, oldest first, optionally filtered."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, human_size, human_time, print_table

__all__ = ["snapshots"]


@click.command()
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Only snapshots with this tag (all must match).")
@click.option("--path", "paths", multiple=True, metavar="PATH", help="Only snapshots of this source (any may match).")
@click.option("--host", metavar="HOST", help="Only snapshots made on this host.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of snapshots.")
@pass_globals
def snapshots(g: Globals, tags: tuple[str, ...], paths: tuple[str, ...], host: str | None, as_json: bool) -> None:
    """List snapshots (oldest first)."""
    snaps = open_repository(g).snapshots(tags=tags, paths=paths, host=host)
    if as_json:
        echo_json([s.to_json() for s in snaps])
        return
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
