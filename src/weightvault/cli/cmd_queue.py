"""``weightvault queue list|run|retry|drop``: the upload queue that training integrations fill."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, pass_globals
from weightvault.cli.output import display, echo_json, print_table
from weightvault.errors import WeightvaultError
from weightvault.integrations import staging
from weightvault.integrations.queue import STATES, UploadQueue
from weightvault.integrations.worker import run_worker

__all__ = ["queue"]


@click.group()
def queue() -> None:
    """The upload queue: checkpoints handed off by a training run, backed up by a worker process."""


@queue.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def list_(states: tuple[str, ...], as_json: bool) -> None:
    """List the jobs, oldest first: state, attempts, the path, its snapshot or last error."""
    jobs = UploadQueue().jobs(states or STATES)
    if as_json:
        echo_json([j.to_json() for j in jobs])
        return
    rows = [[str(j.id), j.state, str(j.attempts), display(j.record_as), (j.snapshot or "")[:8],
             display((j.error or "")[:60])] for j in jobs]
    print_table(["Job", "State", "Tries", "Path", "Snapshot", "Last error"], rows, right=(0, 2))


@queue.command()
@click.option("--wait", is_flag=True, help="Also wait out the backoff of jobs that failed transiently.")
@click.option("--json", "as_json", is_flag=True, help="Print what ran as JSON.")
@pass_globals
def run(g: Globals, wait: bool, as_json: bool) -> None:
    """Back up every queued job now, in order (one worker at a time: if another runs, exit 0 at
    once). The global storage options (--limit-upload, --s3-endpoint ...) apply. Exit 1 if a job
    failed this time."""
    res = run_worker(wait=wait, say=None if as_json else click.echo, storage=g.storage)
    if as_json:
        echo_json({"busy": res.busy, "done": res.done, "errors": res.errors})
    elif res.busy:
        click.echo("another worker is running the queue")
    if res.errors:
        raise WeightvaultError(f"{len(res.errors)} job(s) failed this time",
                               hint="`weightvault queue list` shows why; failed jobs are retried by the next run")


@queue.command()
@click.argument("job_id", type=int)
def retry(job_id: int) -> None:
    """Queue a failed job again, at once."""
    job = UploadQueue().retry(job_id)
    click.echo(f"job {job.id} ({display(job.record_as)}) queued again")


@queue.command()
@click.argument("job_id", type=int)
def drop(job_id: int) -> None:
    """Remove a job that is not running, and its staged files (a done job's snapshot stays)."""
    job = UploadQueue().drop(job_id)
    staging.unpin(job.staged)
    click.echo(f"job {job.id} ({display(job.record_as)}) dropped")
