"""``weightvault restore``: write a snapshot (or the entries matching --include) under a target directory.

Nothing is ever written outside the target. Existing files are handled by --overwrite (default
``error``: refuse with exit 18, before writing anything, if any existing file differs).
"""

from __future__ import annotations

import dataclasses

import click

from weightvault import api
from weightvault.cli.common import Globals, open_other_repository, open_repository, parse_now, pass_globals
from weightvault.cli.output import display, echo_json, human_size
from weightvault.cli.progress import progress_bar, progress_enabled
from weightvault.cli.thawing import thaw_until_ready
from weightvault.errors import UsageError

__all__ = ["restore"]


@click.command()
@click.argument("snapshot", required=False)
@click.option("--source", "run_source", metavar="NAME",
              help="Instead of SNAPSHOT: the whole run NAME of a policy (tag source=NAME): the newest snapshot of"
              " every data class, assembled in --target.")
@click.option("--at", "at", metavar="TIME", help="With --source: the run as it was at TIME (ISO 8601; default: now).")
@click.option("--target", required=True, metavar="DIR", help="Directory to restore into (created if missing).")
@click.option("--include", "includes", multiple=True, metavar="GLOB", help="Restore only matching entries.")
@click.option("--verify", is_flag=True, help="Read each restored file back from disk and check its SHA-256.")
@click.option("--no-setuid", is_flag=True,
              help="Drop setuid and setgid bits (a restore as root otherwise gives them back as recorded).")
@click.option("--overwrite", type=click.Choice(api.OVERWRITE_MODES), default="error", show_default=True,
              help="What to do with files that already exist in the target.")
@click.option("--swap", is_flag=True,
              help="Replace --target DIR (the snapshot's source path) with the snapshot: restore beside it, verify,"
              " validate, then swap it into place, keeping the old contents as DIR.before-<time>.")
@click.option("--backup-previous", is_flag=True,
              help="With --swap: also back up the previous contents (tags safety-copy, replaced-by=SNAPSHOT).")
@click.option("--validate-level", type=click.IntRange(1, 4), default=1, show_default=True,
              help="With --swap: the model validation level the new copy must pass before the swap.")
@click.option("--check", metavar="MODULE:FUNCTION",
              help="With --swap --validate-level 4: your check, given the new copy (e.g. a forward pass).")
@click.option("--repair-from", metavar="REPO",
              help="If data is damaged, rewrite it from this replica (a repository `copy` filled) and go on.")
@click.option("--from-password-file", metavar="FILE", help="With --repair-from: the replica's password.")
@click.option("--thaw", is_flag=True,
              help="The data is in an offline storage class (S3 GLACIER, DEEP_ARCHIVE): request its restore first,"
              " wait up to --restore-timeout, then restore (costs money and hours: docs/CLOUD.md).")
@click.option("--restore-days", type=click.IntRange(1, 3650), default=7, show_default=True,
              help="With --thaw: days the restored copies stay readable.")
@click.option("--restore-tier", type=click.Choice(["Expedited", "Standard", "Bulk"]), default="Standard",
              show_default=True, help="With --thaw: retrieval speed and price.")
@click.option("--restore-timeout", metavar="DURATION", default=None,
              help="With --thaw: wait this long for the data (e.g. 30min, 12h; default: do not wait, exit 25 with"
              " what was requested; run again to pick up).")
@click.option("--restore-poll", metavar="DURATION", default="5min", show_default=True,
              help="With --thaw --restore-timeout: how often to look.")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@pass_globals
def restore(
    g: Globals, snapshot: str | None, run_source: str | None, at: str | None, target: str, includes: tuple[str, ...],
    verify: bool, no_setuid: bool, overwrite: str, swap: bool, backup_previous: bool, validate_level: int,
    check: str | None, repair_from: str | None, from_password_file: str | None, thaw: bool, restore_days: int,
    restore_tier: str, restore_timeout: str | None, restore_poll: str, as_json: bool,
) -> None:
    """Restore SNAPSHOT into --target DIR (or, with --swap, in place of DIR); or, with --source
    NAME [--at TIME], a whole policy-protected run: the newest snapshot of each data class."""
    if (snapshot is None) == (run_source is None):
        raise UsageError("give either SNAPSHOT or --source NAME", hint="e.g. `restore latest --target DIR` or "
                         "`restore --source exp42 --at 2026-11-20T10:00 --target DIR`")
    if at and not run_source:
        raise UsageError("--at goes with --source", hint="for one snapshot, name it by time: `restore @TIME ...`")
    if no_setuid and (swap or run_source is not None):
        raise UsageError("--no-setuid goes with a restore of one snapshot into --target",
                         hint="restore with --target DIR --no-setuid, then move it where it belongs")
    repo = open_repository(g)
    if run_source is not None:
        if swap or repair_from:
            raise UsageError("--source restores into --target: --swap and --repair-from do not apply")
        _restore_run(g, repo, run_source, at, target, includes, overwrite, verify, as_json)
        return
    assert snapshot is not None
    if thaw:
        timeout = api.parse_interval(restore_timeout).total_seconds() if restore_timeout else 0.0
        thaw_until_ready(repo, snapshot, list(includes), days=restore_days, tier=restore_tier, timeout=timeout,
                         poll=api.parse_interval(restore_poll).total_seconds(), quiet=g.quiet or as_json)
    elif restore_timeout:
        raise UsageError("--restore-timeout goes with --thaw")
    if check and not swap:
        raise UsageError("--check is the level-4 check of a --swap restore", hint="add --swap --validate-level 4,"
                         " or run `weightvault validate SNAPSHOT DIR --level 4 --check ...` after a restore")
    if swap:
        if includes or overwrite != "error":
            raise UsageError("--swap restores the whole snapshot: --include and --overwrite do not apply")
        with progress_bar(progress_enabled(g.quiet, as_json), "restore") as cb:
            sw = repo.restore_swap(snapshot, target, level=validate_level, check=check, progress=cb,
                                   backup_previous=backup_previous)
        for line in sw.recovered:
            click.echo(f"note: {line}", err=True)
        if as_json:
            echo_json({"snapshot": sw.snapshot, "target": sw.target, "previous": sw.previous,
                       "previous_snapshot": sw.previous_snapshot, "recovered": sw.recovered,
                       "restore": dataclasses.asdict(sw.restore), "validated_level": validate_level})
        elif not g.quiet:
            kept = f"; the previous contents are in {display(sw.previous)}" if sw.previous else ""
            click.echo(f"restored {sw.restore.files} file(s) ({human_size(sw.restore.bytes)}), verified and validated"
                       f" at level {validate_level}, and swapped into {display(sw.target)}{kept}")
        return
    replica = open_other_repository(g, repair_from, from_password_file, "--repair-from") if repair_from else None
    with progress_bar(progress_enabled(g.quiet, as_json), "restore") as cb:
        res = repo.restore(snapshot, target, includes=includes, overwrite=overwrite, verify=verify, progress=cb,
                           repair_from=replica, no_setuid=no_setuid)
    if as_json:
        echo_json(dataclasses.asdict(res))
    elif not g.quiet:
        click.echo(
            f"restored {res.files} file(s) ({human_size(res.bytes)}), {res.dirs} dir(s), {res.symlinks} symlink(s)"
            f" into {display(target)}; {res.skipped} skipped"
            + (f"; {res.verified} verified" if verify else "")
        )


def _restore_run(g: Globals, repo: api.Repository, source: str, at: str | None, target: str,
                 includes: tuple[str, ...], overwrite: str, verify: bool, as_json: bool) -> None:
    with progress_bar(progress_enabled(g.quiet, as_json), "restore") as cb:
        run = repo.restore_run(source, target, at=parse_now(at), includes=includes, overwrite=overwrite,
                               verify=verify, progress=cb)
    res = run.restore
    if as_json:
        echo_json({"source": run.source, "at": run.at, "snapshots": run.snapshots, **dataclasses.asdict(res)})
    elif not g.quiet:
        classes = ", ".join(f"{c or '(no class)'} {sid[:8]}" for c, sid in run.snapshots.items())
        click.echo(f"restored run {display(source)} from {len(run.snapshots)} snapshot(s) ({classes}):"
                   f" {res.files} file(s) ({human_size(res.bytes)}) into {display(target)}"
                   + (f"; {res.verified} verified" if verify else ""))
