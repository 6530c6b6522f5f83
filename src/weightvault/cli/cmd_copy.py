"""``weightvault copy``: copy snapshots between repositories (other keys, other chunking)."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, named_repository, open_other_repository, open_repository, pass_globals
from weightvault.cli.output import echo_json

__all__ = ["copy"]


@click.command()
@click.argument("snapshots", nargs=-1)
@click.option("--from", "source", required=True, metavar="PATH|s3://...|NAME",
              help="The repository to copy from (or its name in the policy file).")
@click.option("--to", "dest", metavar="PATH|s3://...|NAME",
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
    src = open_other_repository(g, source, from_password_file, "--from")
    dst = named_repository(g, dest) or open_repository(Globals(dest if dest is not None else g.repo, g.password_file,
                                                     g.quiet, g.storage))
    say = None if (g.quiet or as_json) else (lambda msg: click.echo(msg, err=True))
    res = src.copy_to(dst, snapshots, say=say)
    if as_json:
        echo_json({"copied": [{"source": a, "destination": b} for a, b in res.copied], "skipped": res.skipped,
                   "blobs_copied": res.blobs_copied, "blobs_present": res.blobs_present,
                   "blobs_mapped": res.blobs_mapped, "bytes_read": res.bytes_read,
                   "stored_bytes_added": res.stored_bytes_added, "packs_verified": res.packs_verified,
                   "bytes_verified": res.bytes_verified, "packs_cold": res.packs_cold})
    elif not g.quiet:
        for a, b in res.copied:
            click.echo(f"copied snapshot {a[:8]} -> {b[:8]}")
        click.echo(f"{len(res.copied)} snapshot(s) copied, {len(res.skipped)} already there; "
                   f"{res.blobs_copied} blobs stored, {res.blobs_present + res.blobs_mapped} already present; "
                   f"{res.packs_verified} pack(s) read back and verified"
                   + (f"; {res.packs_cold} written into an offline storage class (present, not read back)"
                      if res.packs_cold else ""))
