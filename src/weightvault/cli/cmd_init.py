"""``weightvault init``: create a repository (the default one when no -r/$WEIGHTVAULT_REPO is given)."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, create_repository, pass_globals

__all__ = ["init"]


@click.command()
@click.option(
    "--delta-depth",
    type=click.IntRange(0, 32),
    default=None,
    help="Longest chain of checkpoint deltas (default 8; 0: no deltas). Restoring a chunk decodes at most "
    "this many earlier versions first: lower restores the newest checkpoint faster, higher stores less.",
)
@pass_globals
def init(g: Globals, delta_depth: int | None) -> None:
    """Create a new, empty repository.

    With -r PATH (or $WEIGHTVAULT_REPO) the password comes from --password-file, the environment or a
    prompt asked twice. Without, the embedded default repository is created; if no password is given,
    one is generated and saved in a key file (mode 0600) whose path is printed.
    """
    repo, _default = create_repository(g, delta_depth)
    if not g.quiet:
        click.echo(f"created repository {repo.id} at {repo.location}")
