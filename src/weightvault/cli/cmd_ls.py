"""``weightvault ls``: list the entries of a snapshot, optionally under one path."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, human_size, human_time, mode_string, node_json, print_table

__all__ = ["ls"]


@click.command()
@click.argument("snapshot")
@click.argument("path", required=False)
@click.option("-l", "--long", "long_", is_flag=True, help="Show mode, size and modification time.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entries.")
@pass_globals
def ls(g: Globals, snapshot: str, path: str | None, long_: bool, as_json: bool) -> None:
    """List the entries of SNAPSHOT (an id prefix, 'latest', 'latest:k=v' or '@TIME'), under PATH if given."""
    nodes = open_repository(g).ls(snapshot, path)
    if as_json:
        echo_json([node_json(n) for n in nodes])
        return
    if not long_:
        for n in nodes:
            click.echo(display(n.path))
        return
    rows = []
    for n in nodes:
        name = display(n.path)
        if n.type == "symlink" and n.target is not None:
            name += f" -> {display(n.target)}"
        size = human_size(n.size) if n.type == "file" else ""
        rows.append([mode_string(n), size, human_time(n.mtime_ns), name])
    print_table(["Mode", "Size", "Modified", "Path"], rows, right=(1,))
