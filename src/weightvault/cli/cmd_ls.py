"""``weightvault ls``: list the entries of a snapshot, optionally under one path."""

from __future__ import annotations

import os
from typing import Any

import click

from weightvault import api
from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, human_size, human_time, mode_string, node_json, print_table
from weightvault.errors import NoMatchError

__all__ = ["ls"]


@click.command()
@click.argument("snapshot")
@click.argument("path", required=False)
@click.option("-l", "--long", "long_", is_flag=True,
              help="Show mode, size, stored size, chunking (tensor-aware or cdc), time and stored bytes by codec.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of entries.")
@pass_globals
def ls(g: Globals, snapshot: str, path: str | None, long_: bool, as_json: bool) -> None:
    """List the entries of SNAPSHOT (an id prefix, 'latest', 'latest:k=v' or '@TIME'), under PATH if given."""
    repo = open_repository(g)
    nodes = repo.ls(snapshot, path)
    if path and not nodes:
        snap = repo.find_snapshot(snapshot)
        tops = ", ".join(f"{os.path.basename(p)}/" for p in snap.paths)
        raise NoMatchError(f"snapshot {snap.short_id} has no entry {path!r}",
                           hint=f"paths in a snapshot start with its top directory ({tops});"
                           f" `weightvault ls {snap.short_id}` lists them")
    layouts = repo.layouts(snapshot, path) if as_json or long_ else {}
    if as_json:
        echo_json([node_json(n) | _layout_json(layouts.get(n.path)) for n in nodes])
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
        lay = layouts.get(n.path)
        stored = human_size(lay.stored_bytes) if lay else ""
        codecs = ", ".join(f"{c} {human_size(b)}" for c, b in sorted(lay.stored_by_codec.items())) if lay else ""
        rows.append([mode_string(n), size, stored, lay.chunking if lay else "", human_time(n.mtime_ns), name, codecs])
    print_table(["Mode", "Size", "Stored", "Chunking", "Modified", "Path", "By codec"], rows, right=(1, 2))


def _layout_json(lay: api.FileLayout | None) -> dict[str, Any]:
    if lay is None:
        return {}
    return {"chunking": lay.chunking, "chunks": lay.chunks, "stored_bytes": lay.stored_bytes,
            "stored_by_codec": lay.stored_by_codec}
