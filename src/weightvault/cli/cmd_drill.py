"""``weightvault drill``: restore a snapshot into a scratch directory, validate it, time it."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import echo_json, human_size, report_json
from weightvault.cli.progress import progress_bar, progress_enabled
from weightvault.errors import ValidationFailedError

__all__ = ["drill"]


@click.command()
@click.option("--pick", type=click.Choice(["latest", "random"]), default="latest", show_default=True)
@click.option("--within", metavar="DURATION", help="Only snapshots newer than DURATION ago (30d, 12h).")
@click.option("--level", type=click.IntRange(1, 4), default=3, show_default=True,
              help="Validation level: 1 integrity, 2 format, 3 structure, 4 function (with --check).")
@click.option("--workdir", type=click.Path(file_okay=False), help="Where the scratch copy goes (default: $TMPDIR).")
@click.option("--check", metavar="MODULE:FUNCTION",
              help="Level 4: your check, given the restored directory (e.g. a forward pass within a tolerance).")
@click.option("--any-snapshot", is_flag=True,
              help="Pick among all snapshots (default: prefer those holding a model file, when any does).")
@click.option("--allow-cold", is_flag=True,
              help="If the data is in an offline storage class (S3 GLACIER, DEEP_ARCHIVE), request its restore and"
              " drill once it is online (costs money and hours; default: skip the drill, saying why).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def drill(g: Globals, pick: str, within: str | None, level: int, workdir: str | None, check: str | None,
          any_snapshot: bool, allow_cold: bool, as_json: bool) -> None:
    """A restore drill: pick a snapshot, restore it into an isolated scratch directory (every
    file checked against its SHA-256), validate the models at LEVEL, record the result and the
    restore time (RTO) in the journal, and clean up. Exit 9 if the drill fails."""
    with progress_bar(progress_enabled(g.quiet, as_json), "drill") as cb:
        res = open_repository(g).drill(pick=pick, within=within, level=level, workdir=workdir, check=check,
                                       any_snapshot=any_snapshot, progress=cb, allow_cold=allow_cold)
    if as_json:
        echo_json({"snapshot": res.snapshot, "ok": res.ok, "level": res.level, "rto_s": round(res.rto_s, 3),
                   "restore_s": round(res.restore_s, 3), "validate_s": round(res.validate_s, 3),
                   "files": res.files, "bytes": res.bytes, "error": res.error, "skipped": res.skipped,
                   "report": report_json(res.report) if res.report else None})
    elif res.skipped:
        click.echo(f"drill of snapshot {res.snapshot[:8]} {res.skipped}", err=True)
    elif not g.quiet:
        state = "passed" if res.ok else f"FAILED: {res.error}"
        click.echo(f"drill of snapshot {res.snapshot[:8]}: restored {res.files} files, {human_size(res.bytes)},"
                   f" validated at level {res.level} in {res.rto_s:.1f} s (RTO): {state}")
    if not res.ok and not res.skipped:
        if res.report is not None and res.report.check_problems and not res.report.failed:
            hint = f"the files are sound (levels 1-3 passed); your check {check} failed: see its message above"
        elif res.report is not None and res.report.failed:
            hint = "`weightvault validate SNAPSHOT DIR --level 3` on a restored copy lists every problem"
        else:
            hint = "run `weightvault check --read-data` to find the damaged data; the ledger has the record"
        raise ValidationFailedError(f"drill of snapshot {res.snapshot[:8]} failed: {res.error}", hint=hint)
