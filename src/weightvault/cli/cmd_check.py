"""``weightvault check``: verify the repository's structure and, optionally, its data.

Each problem is printed on stdout (or in the JSON document); then the command exits 5
(CheckFailedError) if any were found.
"""

from __future__ import annotations

import dataclasses

import click

from weightvault.cli.common import Globals, open_other_repository, open_repository, pass_globals
from weightvault.cli.output import echo_json, human_size
from weightvault.cli.progress import progress_bar, progress_enabled
from weightvault.errors import CheckFailedError, UsageError

__all__ = ["check"]


@click.command()
@click.option("--read-data", is_flag=True, help="Read and authenticate every stored byte.")
@click.option("--read-data-subset", "subset", metavar="N/T|X%", help="Read only a subset of the packs: "
              "part N of T (e.g. 1/10), or X percent (e.g. 5%), a different part each run until all are read.")
@click.option("--repair-from", metavar="REPO",
              help="Rewrite damaged or missing data from this replica (a repository `copy` filled), then check again.")
@click.option("--from-password-file", metavar="FILE", help="With --repair-from: the replica's password.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def check(g: Globals, read_data: bool, subset: str | None, repair_from: str | None, from_password_file: str | None,
          as_json: bool) -> None:
    """Check the repository for missing or corrupted data (with --repair-from, and heal it)."""
    if read_data and subset:
        raise UsageError("--read-data and --read-data-subset are mutually exclusive")
    repo = open_repository(g)
    if repair_from:
        replica = open_other_repository(g, repair_from, from_password_file, "--repair-from")
        healed = repo.heal_from(replica)
        if not as_json and not g.quiet:
            click.echo(f"self-healing from {replica.location}: {len(healed.damaged)} damaged blob(s) found,"
                       f" {len(healed.repaired)} rewritten from the replica, {len(healed.unrepaired)} not repairable"
                       + (f", {len(healed.dropped_packs)} lost pack(s) dropped from the index" if healed.dropped_packs
                          else ""))
            for what, why in healed.unrepaired:
                click.echo(f"problem: {what[:16]}: {why}")
        read_data = read_data or subset is None
    show = progress_enabled(g.quiet, as_json) and (read_data or subset is not None)
    with progress_bar(show, "check", unit="packs") as cb:
        res = repo.check(read_data=read_data, subset=subset, progress=cb)
    if as_json:
        doc = dataclasses.asdict(res)
        doc["ok"] = res.ok
        echo_json(doc)
    else:
        for w in res.warnings:
            click.echo(f"warning: {w}", err=True)
        for e in res.errors:
            click.echo(f"problem: {e}")
        if not g.quiet:
            part = f", part {res.subset}" if res.subset else ""
            done = f", {res.coverage:.0%} of the packs read this round" if res.coverage is not None else ""
            read = (f", read {res.packs_read} pack(s) ({human_size(res.bytes_read)}{part}{done})"
                    if read_data or subset else "")
            click.echo(f"checked {res.snapshots} snapshot(s) and {res.packs} pack(s){read}: "
                       + ("no problems found" if res.ok else f"{len(res.errors)} problem(s)"))
    if not res.ok:
        raise CheckFailedError(
            f"check found {len(res.errors)} problem(s)",
            hint="the problems above name the damaged packs and the snapshot files that use them",
        )
