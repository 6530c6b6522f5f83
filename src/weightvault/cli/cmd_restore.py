"""``weightvault restore``: write a snapshot (or the entries matching --include) under a target directory.

Nothing is ever written outside the target. Existing files are handled by --overwrite (default
``error``: refuse with exit 18, before writing anything, if any existing file differs).
"""

from __future__ import annotations

import dataclasses

import click

from weightvault import api
from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, human_size
from weightvault.cli.progress import progress_bar, progress_enabled

__all__ = ["restore"]


@click.command()
@click.argument("snapshot")
@click.option("--target", required=True, metavar="DIR", help="Directory to restore into (created if missing).")
@click.option("--include", "includes", multiple=True, metavar="GLOB", help="Restore only matching entries.")
@click.option("--verify", is_flag=True, help="Read each restored file back from disk and check its SHA-256.")
@click.option("--overwrite", type=click.Choice(api.OVERWRITE_MODES), default="error", show_default=True,
              help="What to do with files that already exist in the target.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_globals
def restore(
    g: Globals, snapshot: str, target: str, includes: tuple[str, ...], verify: bool, overwrite: str, as_json: bool
) -> None:
    """Restore SNAPSHOT into --target DIR."""
    repo = open_repository(g)
    with progress_bar(progress_enabled(g.quiet, as_json), "restore") as cb:
        res = repo.restore(snapshot, target, includes=includes, overwrite=overwrite, verify=verify, progress=cb)
    for path, reason in res.errors:
        click.echo(f"error: {display(path)}: {reason}", err=True)
    if as_json:
        echo_json(dataclasses.asdict(res))
    elif not g.quiet:
        click.echo(
            f"restored {res.files} file(s) ({human_size(res.bytes)}), {res.dirs} dir(s), {res.symlinks} symlink(s)"
            f" into {display(target)}; {res.skipped} skipped"
            + (f"; {res.verified} verified" if verify else "")
        )
