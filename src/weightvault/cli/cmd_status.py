"""``weightvault status``: recovery points against the policy's RPO (non-zero exit when breached)."""

from __future__ import annotations

import click

from weightvault import api
from weightvault.cli.common import Globals, load_policy_file, now_option, parse_now, pass_globals, policy_option
from weightvault.cli.output import echo_json, print_table
from weightvault.errors import RpoBreachedError
from weightvault.integrations.queue import UploadQueue

__all__ = ["status"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d{(s % 86400) // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m"


@click.command()
@policy_option
@now_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_globals
def status(g: Globals, policy_path: str, now: str | None, as_json: bool) -> None:
    """Per source and data class (in its repository) and per replica: the newest snapshot's age
    against the source's RPO, and how long ago data there was last verified (copies and tier moves
    read back what they write); then upload-queue jobs that wait with a reason (a failed precheck
    or attempt) or failed. Exit 6 when any RPO is breached, so cron and monitoring can alert."""
    spec = load_policy_file(policy_path)
    lines = api.policy_status(spec, now=parse_now(now), fleet=api.Fleet(spec, g.storage))
    breached = [ln for ln in lines if ln.breached]
    waiting = [j for j in UploadQueue().jobs(("queued", "running", "failed")) if j.error or j.state != "queued"]
    if as_json:
        echo_json({"ok": not breached, "lines": [dict(ln.__dict__) for ln in lines],
                   "queue": [j.to_json() for j in waiting]})
    elif not g.quiet:
        rows = [[ln.source, ln.dc or "*", ln.repository, ln.site, ln.role,
                 "no files" if ln.no_files else _age(ln.age_s), _age(ln.rpo_s), _age(ln.verified_age_s),
                 "BREACHED" if ln.breached else "ok (no files)" if ln.no_files else "ok"] for ln in lines]
        print_table(["Source", "Class", "Repository", "Site", "Role", "Last", "RPO", "Verified", "State"], rows)
        for j in waiting:  # hand-offs not backed up yet and why (a failed precheck, a failed attempt)
            click.echo(f"queue: job {j.id} {j.state}: {j.record_as}" + (f": {j.error}" if j.error else ""))
    if breached:
        raise RpoBreachedError(f"{len(breached)} recovery point(s) older than their RPO",
                               hint="run `weightvault policy apply` (and check why it has not run)")
