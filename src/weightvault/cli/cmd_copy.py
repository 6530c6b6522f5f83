"""``weightvault copy``: copy snapshots between repositories (other keys, other chunking)."""

from __future__ import annotations

import os
import sys

import click

from weightvault import api
from weightvault.cli.common import Globals, open_repository, pass_globals, supplied_password
from weightvault.cli.output import echo_json
from weightvault.errors import RepositoryNotFoundError, UsageError

__all__ = ["copy"]


def _from_password(g: Globals, from_password_file: str | None, location: str) -> bytes:
    """--from-password-file, $WEIGHTVAULT_FROM_PASSWORD(_FILE), else the destination's password
    (or a prompt on a terminal)."""
    if from_password_file:
        return api.read_password_file(from_password_file)
    env = os.environ.get("WEIGHTVAULT_FROM_PASSWORD")
    if env:
        return os.fsencode(env)
    path = os.environ.get("WEIGHTVAULT_FROM_PASSWORD_FILE")
    if path:
        return api.read_password_file(path)
    pw = supplied_password(g)
    if pw is not None:
        return pw
    if not sys.stdin.isatty():
        raise UsageError(
            f"no password given for the source repository {location}",
            hint="use --from-password-file, or set $WEIGHTVAULT_FROM_PASSWORD or $WEIGHTVAULT_FROM_PASSWORD_FILE",
        )
    value: str = click.prompt(f"password for the source repository {location}", hide_input=True, err=True)
    return value.encode("utf-8")


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--from", "source", required=True, metavar="PATH|s3://…", help="The repository to copy from.")
@click.option("--to", "dest", metavar="PATH|s3://…",
              help="The repository to copy into (default: the one chosen by -r, as for every command).")
@click.option("--from-password-file", metavar="FILE",
              help="Source password (default: $WEIGHTVAULT_FROM_PASSWORD(_FILE), else the destination's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def copy(g: Globals, snapshots: tuple[str, ...], source: str, dest: str | None, from_password_file: str | None,
         as_json: bool) -> None:
    """Copy SNAPSHOT... (default: every snapshot) from --from into --to. The repositories may use
    different passwords, keys and chunking parameters. Only data the destination lacks is stored,
    everything written is read back and verified before a snapshot is committed, and snapshots
    copied before are skipped, so repeating a copy is cheap."""
    if not api.repository_exists(source, g.storage):
        raise RepositoryNotFoundError(f"no repository at {source}", hint="check the --from location")
    dst = open_repository(Globals(dest if dest is not None else g.repo, g.password_file, g.quiet, g.storage))
    src = api.Repository.open(source, _from_password(g, from_password_file, source), storage=g.storage)
    say = None if (g.quiet or as_json) else (lambda msg: click.echo(msg, err=True))
    res = src.copy_to(dst, snapshots, say=say)
    if as_json:
        echo_json({"copied": [{"source": a, "destination": b} for a, b in res.copied], "skipped": res.skipped,
                   "blobs_copied": res.blobs_copied, "blobs_present": res.blobs_present,
                   "blobs_mapped": res.blobs_mapped, "bytes_read": res.bytes_read,
                   "stored_bytes_added": res.stored_bytes_added, "packs_verified": res.packs_verified,
                   "bytes_verified": res.bytes_verified})
    elif not g.quiet:
        for a, b in res.copied:
            click.echo(f"copied snapshot {a[:8]} -> {b[:8]}")
        click.echo(f"{len(res.copied)} snapshot(s) copied, {len(res.skipped)} already there; "
                   f"{res.blobs_copied} blobs stored, {res.blobs_present + res.blobs_mapped} already present; "
                   f"{res.packs_verified} pack(s) read back and verified")
