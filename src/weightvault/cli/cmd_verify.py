"""``weightvault verify``: re-read a snapshot and check every file's SHA-256; compare with a live tree."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals, percent
from weightvault.cli.output import echo_json, human_size
from weightvault.cli.progress import progress_bar, progress_enabled
from weightvault.errors import DifferencesFoundError, IntegrityError

__all__ = ["verify"]


@click.command()
@click.argument("snapshot")
@click.option("--against", metavar="DIR", help="Also compare with this live directory (missing, changed, extra).")
@click.option("--sample", metavar="PCT",
              help="Check a deterministic PCT of the files, another part on each run, so repeated runs cover all.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_globals
def verify(g: Globals, snapshot: str, against: str | None, sample: str | None, as_json: bool) -> None:
    """Re-read SNAPSHOT's data: every blob authenticated and hash-checked, every file's SHA-256
    (what sha256sum printed for the original) compared with the manifest. Exit 4 when stored data
    is damaged, 8 when --against finds differences."""
    repo = open_repository(g)
    fraction = percent(sample, "--sample") if sample else None
    with progress_bar(progress_enabled(g.quiet, as_json), "verify") as cb:
        res = repo.verify(snapshot, against=against, sample=fraction, progress=cb)
    if as_json:
        echo_json({"snapshot": res.snapshot, "ok": res.ok, "files": res.files, "bytes": res.bytes,
                   "blobs": res.blobs, "sample": list(res.sample) if res.sample else None,
                   "coverage": res.coverage, "damaged": [{"path": p, "problem": w} for p, w in res.damaged],
                   "missing": res.missing, "changed": res.changed, "extra": res.extra, "cold": res.cold})
    elif not g.quiet:
        for p, what in res.damaged:
            click.echo(f"DAMAGED  {p}: {what}")
        for label, paths in (("missing", res.missing), ("changed", res.changed), ("extra", res.extra)):
            for p in paths:
                click.echo(f"{label:8} {p}")
        part = f" (bucket {res.sample[0] + 1} of {res.sample[1]}, {res.coverage:.0%} covered)" if res.sample else ""
        click.echo(f"verified {res.files} file(s), {human_size(res.bytes)}, {res.blobs} blobs of snapshot "
                   f"{res.snapshot[:8]}{part}: " + ("ok" if res.ok else "PROBLEMS FOUND"))
    if res.cold:
        click.echo(f"skipped {len(res.cold)} file(s) whose data is in an offline storage class (GLACIER,"
                   " DEEP_ARCHIVE): reading it costs money and hours; `restore --thaw` or `drill --allow-cold`"
                   " requests it (docs/CLOUD.md)", err=True)
    if res.damaged:
        raise IntegrityError(f"{len(res.damaged)} file(s) of snapshot {res.snapshot[:8]} are damaged in the repository",
                             hint="run `weightvault check --read-data` to locate the damaged packs")
    if not res.ok:
        raise DifferencesFoundError(
            f"{against} differs from snapshot {res.snapshot[:8]}: {len(res.missing)} missing, "
            f"{len(res.changed)} changed, {len(res.extra)} extra")
