"""``weightvault prune``: delete data no snapshot needs (two-phase, safe beside running backups)."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals, percent
from weightvault.cli.output import echo_json, prune_json, prune_lines

__all__ = ["prune"]


@click.command()
@click.option("--max-unused", default="10%", show_default=True, metavar="PCT",
              help="Repack a pack when more than PCT of it is unused (100% never repacks; 0% repacks every"
              " pack with any unused byte).")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be deleted and repacked; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def prune(g: Globals, max_unused: str, dry_run: bool, as_json: bool) -> None:
    """Delete packs no snapshot needs and repack partly used ones. Delta bases that live data needs
    are kept. Backups may run meanwhile: packs they might still use are only condemned, and a later
    prune deletes them once those backups have finished."""
    repo = open_repository(g)
    say = None if (g.quiet or as_json) else (lambda msg: click.echo(msg, err=True))
    res = repo.prune(max_unused=percent(max_unused, "--max-unused"), dry_run=dry_run, say=say)
    if as_json:
        echo_json(prune_json(res))
    elif not g.quiet:
        for line in prune_lines(res):
            click.echo(line)
