"""``weightvault unlock``: remove stale locks (left by crashed processes), or every lock."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals

__all__ = ["unlock"]


@click.command()
@click.option("--remove-all", is_flag=True, help="Remove every lock, including those of live processes. "
              "Only do this when you are sure no other weightvault process uses the repository.")
@pass_globals
def unlock(g: Globals, remove_all: bool) -> None:
    """Remove stale repository locks."""
    repo = open_repository(g)
    removed = repo.unlock(remove_all=remove_all)
    for lk in removed:
        click.echo(f"removed {lk.describe()}")
    left = repo.locks()
    if not g.quiet:
        if not removed:
            click.echo("no stale locks")
        for lk in left:
            click.echo(f"kept {lk.describe()} (its process is alive)")
        if left:
            click.echo("hint: use --remove-all only if that process is not using the repository", err=True)
