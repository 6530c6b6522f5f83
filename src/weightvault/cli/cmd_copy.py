"""``weightvault copy``: copy snapshots between repositories (other keys, other chunking)."""

from __future__ import annotations

import os
import sys

import click

from weightvault import api
from weightvault.cli.common import (
    DEFAULT_POLICY,
    Globals,
    load_policy_file,
    open_repository,
    pass_globals,
    supplied_password,
)
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


def _named(g: Globals, name: str | None) -> api.Repository | None:
    """A repository named in the policy file ($WEIGHTVAULT_POLICY or the default one), if ``name``
    is such a name and not an existing repository path."""
    if not name or "/" in name or ":" in name or api.repository_exists(name, g.storage):
        return None
    path = os.path.expanduser(os.environ.get("WEIGHTVAULT_POLICY") or DEFAULT_POLICY)
    if not os.path.exists(path):
        return None
    spec = load_policy_file(path)
    return api.Fleet(spec, g.storage)[name] if name in spec.repositories else None


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--from", "source", required=True, metavar="PATH|s3://…|NAME",
              help="The repository to copy from (or its name in the policy file).")
@click.option("--to", "dest", metavar="PATH|s3://…|NAME",
              help="The repository to copy into, or its name in the policy file (default: the one chosen by -r).")
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
    src = _named(g, source)
    if src is None:
        if not api.repository_exists(source, g.storage):
            raise RepositoryNotFoundError(f"no repository at {source}",
                                          hint="check the --from location (a path, s3:// URL or policy name)")
        src = api.Repository.open(source, _from_password(g, from_password_file, source), storage=g.storage)
    dst = _named(g, dest) or open_repository(Globals(dest if dest is not None else g.repo, g.password_file,
                                                     g.quiet, g.storage))
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
