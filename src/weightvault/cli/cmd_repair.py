"""``weightvault repair index``: rebuild the index from the pack headers."""

from __future__ import annotations

import json

import click

from weightvault.cli.common import Globals, open_repository, pass_globals

__all__ = ["repair"]


@click.group()
def repair() -> None:
    """Repair repository metadata."""


@repair.command("index")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def index(g: Globals, as_json: bool) -> None:
    """Rebuild the index from the pack headers (takes an exclusive lock).

    Use it when `check` reports a damaged or missing index file. New index files are written
    before the old ones are removed, so an interruption leaves a usable index.
    """
    repo = open_repository(g)
    res = repo.repair_index()
    if as_json:
        click.echo(json.dumps({
            "packs": res.packs, "blobs": res.blobs, "index_files_written": res.index_files_written,
            "index_files_removed": res.index_files_removed, "carried_over": res.carried_over,
            "unreadable": res.unreadable, "skipped_index_files": res.skipped_index_files,
        }))
    elif not g.quiet:
        click.echo(f"rebuilt the index: {res.packs} pack(s), {res.blobs} blob(s) in {res.index_files_written} "
                   f"index file(s); removed {res.index_files_removed} old index file(s)")
        for name in res.skipped_index_files:
            click.echo(f"  damaged index file {name[:12]} was replaced")
    for pack in res.carried_over:
        click.echo(f"warning: pack {pack} has an unreadable header; kept its entries from the old index", err=True)
    for pack in res.unreadable:
        click.echo(f"warning: pack {pack} has an unreadable header and no index entry; its blobs are lost "
                   "(run `weightvault check` to see the affected files)", err=True)
