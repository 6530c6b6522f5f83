"""``weightvault diff``: what changed between two snapshots.

Change codes: ``+`` added, ``-`` removed, ``M`` content modified, ``T`` type changed, ``U`` metadata only.
"""

from __future__ import annotations

import os

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, human_size, path_fields

__all__ = ["diff"]


@click.command()
@click.argument("snap_a")
@click.argument("snap_b")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
@pass_globals
def diff(g: Globals, snap_a: str, snap_b: str, as_json: bool) -> None:
    """Show the differences from SNAP_A to SNAP_B."""
    res = open_repository(g).diff(snap_a, snap_b)
    counts = res.counts()
    if as_json:
        entries = [
            {"change": e.change, **path_fields(os.fsencode(e.path)), "type": e.type,
             "size_before": e.size_before, "size_after": e.size_after}
            for e in res.entries
        ]
        echo_json({"entries": entries, "counts": counts,
                   "added_bytes": res.added_bytes, "removed_bytes": res.removed_bytes})
        return
    for e in res.entries:
        sizes = ""
        if e.change == "M":
            sizes = f"  ({human_size(e.size_before)} -> {human_size(e.size_after)})"
        click.echo(f"{e.change}  {display(e.path)}{'/' if e.type == 'dir' else ''}{sizes}")
    if not g.quiet:
        click.echo(
            f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, {counts['T']} type changed, "
            f"{counts['U']} metadata only; +{human_size(res.added_bytes)} -{human_size(res.removed_bytes)}"
        )
