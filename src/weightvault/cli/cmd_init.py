"""``weightvault init``: create a repository (the default one when no -r/$WEIGHTVAULT_REPO is given)."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, create_repository, pass_globals

__all__ = ["init"]


@click.command()
@pass_globals
def init(g: Globals) -> None:
    """Create a new, empty repository.

    With -r PATH (or $WEIGHTVAULT_REPO) the password comes from --password-file, the environment or a
    prompt asked twice. Without, the embedded default repository is created; if no password is given,
    one is generated and saved in a key file (mode 0600) whose path is printed.
    """
    repo, _default = create_repository(g)
    if not g.quiet:
        click.echo(f"created repository {repo.id} at {repo.location}")
