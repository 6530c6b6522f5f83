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
@click.option("--append-only", is_flag=True,
              help="weightvault refuses forget, prune, repair and key removal in this repository (enforce it on the"
              " storage too: see docs/POLICIES.md).")
@click.option("--kms", metavar="SPEC",
              help="Wrap the repository key with a key management service, e.g. aws:arn:aws:kms:REGION:ACCT:key/ID:"
              " a host whose role may use that key opens the repository without a password. With a password"
              " given too, it also gets a password key (docs/CLOUD.md).")
@pass_globals
def init(g: Globals, delta_depth: int | None, append_only: bool, kms: str | None) -> None:
    """Create a new, empty repository.

    With -r PATH (or $WEIGHTVAULT_REPO) the password comes from --password-file, the environment or a
    prompt asked twice. Without, the embedded default repository is created; if no password is given,
    one is generated and saved in a key file (mode 0600) whose path is printed.
    """
    repo, _default = create_repository(g, delta_depth, append_only, kms)
    if not g.quiet:
        kind = "append-only repository" if append_only else "repository"
        click.echo(f"created {kind} {repo.id} at {repo.location}")
    if kms and not any(not k.kms for k in repo.list_keys()):
        click.echo("warning: only the KMS key opens this repository; if that key is deleted or lost, so is the"
                   " data. Add a password key kept offline: weightvault key add", err=True)
