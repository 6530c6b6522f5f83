"""``weightvault key``: list, add and remove the passwords and KMS keys (key files) that open a
repository.

New passwords come from ``--new-password-file`` or a prompt asked twice on a TTY, never from argv.
``key passwd`` adds a key for the new password, then removes the one in use.
"""

from __future__ import annotations

import click

from weightvault import api
from weightvault.cli.common import Globals, new_password, open_repository, pass_globals, supplied_password
from weightvault.cli.output import display, echo_json, human_time, print_table
from weightvault.errors import UsageError

__all__ = ["key"]

_NEW_PW = click.option("--new-password-file", metavar="FILE", help="Read the new password from the first line of FILE.")


@click.group()
def key() -> None:
    """Manage the repository's keys (one per password)."""


@key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of keys.")
@pass_globals
def list_(g: Globals, as_json: bool) -> None:
    """List the keys; '*' marks the one that opened the repository."""
    repo = open_repository(g)
    keys = repo.list_keys()
    if as_json:
        echo_json([{"id": k.name, "current": k.name == repo.current_key, "created": k.created, "host": k.host,
                    "user": k.user, "kind": "kms" if k.kms else "password", "kms": k.kms or None} for k in keys])
        return
    rows = [["*" if k.name == repo.current_key else "", k.name[:12], display(k.kms) if k.kms else "password",
             human_time(k.created) if k.created else "?", display(k.user), display(k.host)] for k in keys]
    print_table(["", "ID", "Kind", "Created", "User", "Host"], rows)


@key.command()
@_NEW_PW
@click.option("--kms", metavar="SPEC", help="Add a key wrapped by a key management service (aws:KEY_ARN) instead of"
              " a password key; raises a format-5 repository to format 6 (docs/CLOUD.md).")
@pass_globals
def add(g: Globals, new_password_file: str | None, kms: str | None) -> None:
    """Add a key for a new password, or one wrapped by a KMS key (the existing ones keep working)."""
    repo = open_repository(g)
    if kms is None:
        name = repo.add_key(new_password(new_password_file, "new password"))
        click.echo(f"added key {name[:12]}")
        return
    if new_password_file:
        raise UsageError("--kms and --new-password-file: add one key at a time")
    name, raised_from = repo.add_kms_key(kms)
    if raised_from is not None:
        click.echo(f"note: raised the repository from format version {raised_from} to 6 for the KMS key; a"
                   f" weightvault that reads only version {raised_from} no longer opens it", err=True)
    click.echo(f"added KMS key {name[:12]} ({kms})")


@key.command()
@click.argument("key_id")
@pass_globals
def remove(g: Globals, key_id: str) -> None:
    """Remove the key KEY_ID (a unique id prefix); not the one in use."""
    name = open_repository(g).remove_key(key_id)
    click.echo(f"removed key {name[:12]}")


@key.command()
@_NEW_PW
@pass_globals
def passwd(g: Globals, new_password_file: str | None) -> None:
    """Change the password: add a key for the new one, remove the key in use."""
    repo = open_repository(g)
    old = repo.current_key
    name = repo.change_password(new_password(new_password_file, "new password"))
    click.echo(f"password changed: added key {name[:12]}, removed key {old[:12]}")
    if g.repo is None and supplied_password(g) is None and api.default_key_file().exists():
        click.echo(
            f"warning: the key file {api.default_key_file()} holds the old password and no longer opens the"
            " default repository; use the new password ($WEIGHTVAULT_PASSWORD or --password-file) and"
            " delete or replace that file",
            err=True,
        )
