"""``weightvault backup``: back up files and directories into one new snapshot.

Exit 0 on success; exit 3 (PartialBackupError) when some sources could not be read: the snapshot is
still saved, and each skipped path is listed with its reason on stderr. Warnings go to stderr.
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from weightvault import api
from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, group_json, human_size
from weightvault.cli.progress import progress_bar, progress_enabled
from weightvault.errors import PartialBackupError

__all__ = ["backup"]


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Tag the snapshot (repeatable).")
@click.option("--exclude", "excludes", multiple=True, metavar="GLOB", help="Skip matching paths (repeatable).")
@click.option("--exclude-caches", is_flag=True, help="Skip directories containing a CACHEDIR.TAG.")
@click.option("--force", is_flag=True, help="Re-read every file, even those unchanged since the parent snapshot.")
@click.option("--parent", metavar="SNAPSHOT", help="Compare against this snapshot (default: the newest one "
              "with the same host and paths).")
@click.option("--host", metavar="HOST", help="Record this host name instead of this machine's.")
@click.option("--group", metavar="RUN_ID", help="Sharded checkpoint: this backup is one rank's shard of group RUN_ID.")
@click.option("--rank", type=int, metavar="R", help="With --group: this process's rank, 0..W-1.")
@click.option("--world-size", type=int, metavar="W", help="With --group: the number of ranks.")
@click.option("--min-free", type=click.FloatRange(0, 99), default=10.0, show_default=True, metavar="PCT",
              help="Refuse (exit 15, before writing) if the repository's disk would keep less than PCT% free "
              "after this backup; 0 disables the check.")
@click.option("--include", "includes", multiple=True, metavar="GLOB",
              help="Back up only files matching GLOB (repeatable; directories are always kept).")
@click.option("--lock-for", metavar="DURATION",
              help="Retention lock: forget keeps this snapshot, and refuses to remove it, for DURATION (30d, 1y).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def backup(
    g: Globals, paths: tuple[str, ...], tags: tuple[str, ...], excludes: tuple[str, ...], exclude_caches: bool,
    force: bool, parent: str | None, host: str | None, group: str | None, rank: int | None,
    world_size: int | None, min_free: float, includes: tuple[str, ...], lock_for: str | None, as_json: bool,
) -> None:
    """Back up PATH... into a new snapshot (creating the default repository on first use).

    With --group RUN_ID --rank R --world-size W, every rank of a distributed job backs up its shard;
    the group becomes one snapshot (listed and restorable) once all W ranks have committed.
    """
    lock_until = datetime.now(UTC) + api.parse_duration(lock_for) if lock_for else None
    repo = open_repository(g, create_default=True)
    with progress_bar(progress_enabled(g.quiet, as_json), "backup") as cb:
        res = repo.backup(paths, tags=tags, excludes=excludes, exclude_caches=exclude_caches, force=force,
                          parent=parent, host=host, progress=cb, group=group, rank=rank, world_size=world_size,
                          min_free=min_free / 100, includes=includes, lock_until=lock_until)
    snap = res.snapshot
    for path, reason in res.warnings:
        click.echo(f"warning: {display(path)}: {reason}", err=True)
    grp = res.group
    if as_json:
        echo_json({
            "snapshot": snap.to_json(),
            "errors": [{"path": p, "reason": r} for p, r in res.errors],
            "warnings": [{"path": p, "reason": r} for p, r in res.warnings],
            **({"group": group_json(grp)} if grp is not None else {}),
            "stages": res.stages,
        })
    elif not g.quiet:
        s = snap.summary
        click.echo(f"snapshot {snap.short_id} saved ({snap.id})")
        click.echo(f"  files: {int(s.get('files_new', 0))} new, {int(s.get('files_changed', 0))} changed, "
                   f"{int(s.get('files_unmodified', 0))} unmodified ({int(s.get('files', 0))} in snapshot)")
        click.echo(f"  read: {human_size(s.get('bytes_read', 0))} of {human_size(s.get('bytes', 0))}")
        click.echo(f"  added to repository: {human_size(s.get('stored_bytes_added', 0))} "
                   f"({int(s.get('blobs_added', 0))} new blobs)")
        click.echo(f"  duration: {float(s.get('duration_s', 0)):.2f}s")
        if grp is not None:
            done = f", group snapshot {grp.merged.short_id}" if grp.merged is not None else ""
            click.echo(f"  group {display(grp.id)} (rank {rank} of {world_size}): {grp.status()}{done}")
    if res.errors:
        for path, reason in res.errors:
            click.echo(f"unreadable: {display(path)}: {reason}", err=True)
        raise PartialBackupError(
            f"snapshot {snap.short_id} saved, but {len(res.errors)} source path(s) could not be read",
            snapshot_id=snap.id, errors=res.errors,
        )
