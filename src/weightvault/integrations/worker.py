"""Handing checkpoints off (``enqueue``) and backing them up in a worker *process* (``run_worker``).

``enqueue`` pins the checkpoint (``staging.pin``), records the job (``queue.UploadQueue``) and, by
default, starts a worker process if none runs: it returns in the time a few hard links take, so
training does not wait for the upload, and the worker has its own interpreter and memory (the
training process's GIL and RSS are untouched).

``run_worker`` holds ``$XDG_STATE_HOME/weightvault/queue.lock`` (``flock``, released by the kernel
if the worker dies), so one worker runs at a time, and drains the queue in order. For each job it
first looks in the repository for a snapshot tagged ``wv-job=KEY`` (a worker killed after the
commit and before marking the job done): found, the job is done; else it backs up the staged
tree, recorded as the original path, with the newest snapshot of the same ``run=`` tag as parent
(so checkpoint N's tensors are stored as deltas against checkpoint N-k's). A transient failure
(storage, lock, space) is retried with backoff; after ``max_attempts``, or at once for a
permanent one (wrong password, no repository), the job is ``failed`` and stays for ``weightvault
queue retry``. So is a job whose workers all died running it (claimed more than ``max_attempts``
times). The staged tree is removed once its job is done.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from weightvault import api
from weightvault.errors import (
    NoSpaceError,
    RepositoryLockedError,
    TransientBackendError,
    UsageError,
    WeightvaultError,
)
from weightvault.integrations import staging
from weightvault.integrations.queue import JOB_TAG, Job, UploadQueue, new_key
from weightvault.paths import state_home

__all__ = ["WorkerRun", "enqueue", "open_repository", "run_worker", "spawn_worker", "wait_for", "worker_running"]

MAX_ATTEMPTS = 5
WORKER_NICE = 10  # the spawned worker's default niceness: training first where cores are short
_TRANSIENT = (TransientBackendError, RepositoryLockedError, NoSpaceError)


def lock_path() -> Path:
    return state_home() / "queue.lock"


def enqueue(repository: str | os.PathLike[str], path: str | os.PathLike[str], tags: list[str] | None = None, *,
            password_file: str | None = None, queue: UploadQueue | None = None, spawn: bool = True) -> Job:
    """Pin ``path`` and queue its backup into ``repository`` with ``tags``; returns the job. The
    snapshot records ``path`` itself. ``spawn``: start a worker process if none is running."""
    q = queue or UploadQueue()
    key = new_key()
    pinned = staging.pin(path, key)
    if pinned.copied:
        print(f"weightvault: {path} could not be hard-linked for upload (another file system?): copied",
              file=sys.stderr)
    job = q.add(os.fspath(repository), str(pinned.path), os.path.abspath(path), list(tags or []),
                password_file=os.path.abspath(password_file) if password_file else None, key=key)
    if spawn:
        spawn_worker(q)
    return job


def worker_running() -> bool:
    """Whether a worker holds the queue lock now."""
    lock_path().parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock we took
    return False


def spawn_worker(queue: UploadQueue | None = None) -> bool:
    """Start ``python -m weightvault queue run`` detached, unless a worker runs (it will see the
    new job: a worker re-reads the queue after releasing its lock). The worker is started by a
    short-lived ``/bin/sh`` in a new session, so it is no child of the training process (no
    zombie, nothing to reap) and outlives it; its output goes to
    ``$XDG_STATE_HOME/weightvault/worker.log``. It runs at niceness ``$WEIGHTVAULT_WORKER_NICE``
    (default 10; 0: the training process's own priority), so where cores are short the training
    steps come first and the upload takes what is left. Returns whether one was started."""
    if worker_running():
        return False
    log = state_home() / "worker.log"
    nice = os.environ.get("WEIGHTVAULT_WORKER_NICE", str(WORKER_NICE))
    if not nice.isdigit() or int(nice) > 19:
        raise UsageError(f"WEIGHTVAULT_WORKER_NICE={nice!r} is not a niceness from 0 to 19")
    env = dict(os.environ, WV_WORKER_LOG=str(log), WV_WORKER_NICE=nice)
    if queue is not None:
        env["WEIGHTVAULT_QUEUE"] = str(queue.path)
    subprocess.run(["/bin/sh", "-c", 'exec nice -n "$WV_WORKER_NICE" "$@" </dev/null >>"$WV_WORKER_LOG" 2>&1 &', "sh",
                    sys.executable, "-m", "weightvault", "queue", "run"],
                   env=env, stdin=subprocess.DEVNULL, check=True, timeout=60, start_new_session=True)
    return True


@dataclass
class WorkerRun:
    """What one ``run_worker`` did: jobs finished (id -> snapshot), failed attempts, and whether
    another worker held the lock (then nothing ran)."""

    done: dict[int, str] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    summaries: dict[int, dict[str, float]] = field(default_factory=dict)  # job id -> its snapshot's summary
    busy: bool = False


def open_repository(location: str, password_file: str | None = None,
                    storage: api.StorageOptions | None = None) -> api.Repository:
    """The repository a job (or an integration) names, with its password from ``password_file``,
    else ``$WEIGHTVAULT_PASSWORD``, else the default repository's key file."""
    if password_file:
        pw = api.read_password_file(os.path.expanduser(password_file))
    elif os.environ.get("WEIGHTVAULT_PASSWORD"):
        pw = os.environ["WEIGHTVAULT_PASSWORD"].encode()
    elif Path(location) == api.default_repository_path() and api.default_key_file().exists():
        pw = api.read_password_file(api.default_key_file())
    else:
        raise WeightvaultError(f"no password for {location}",
                               hint="give a password file, or set $WEIGHTVAULT_PASSWORD for the worker")
    return api.Repository.open(location, pw, storage=storage)


def _run_job(job: Job, storage: api.StorageOptions | None = None,
             max_attempts: int = MAX_ATTEMPTS) -> tuple[str, str | None, dict[str, float]]:
    """Back up one job (exactly once); returns the snapshot id, a note on files rewritten in
    place after the hand-off (backed up as they are now) if any, and the snapshot's summary. A job claimed more than
    ``max_attempts`` times without an answer (each worker before died running it: killed, out of
    memory) is given up with an error instead of killing every next worker too."""
    repo = open_repository(job.repository, job.password_file, storage)
    committed = repo.snapshots(tags=[f"{JOB_TAG}={job.key}"])
    if committed:
        return committed[-1].id, None, dict(committed[-1].summary)
    if job.attempts > max_attempts:
        raise WeightvaultError(
            f"gave up after {job.attempts - 1} attempts: the worker stopped while backing it up each time",
            hint="look for an out-of-memory kill or a crash of the worker; `weightvault queue retry ID` tries again")
    changed = staging.changed_since_pin(job.staged)
    # the run's previous checkpoint as parent: checkpoint-N is a new path, but its tensors are
    # stored as deltas against checkpoint-(N-k) of the same run when that is the parent
    run = next((t for t in job.tags if t.startswith("run=")), None)
    earlier = repo.snapshots(tags=[run]) if run else []
    res = repo.backup([job.staged], tags=job.all_tags, record_as=[job.record_as],
                      parent=earlier[-1].id if earlier else None)
    note = (f"rewritten in place after the hand-off, backed up as they were then: {', '.join(changed[:5])}"
            if changed else None)
    return res.snapshot.id, note, dict(res.snapshot.summary)


def run_worker(queue: UploadQueue | None = None, *, max_attempts: int = MAX_ATTEMPTS, wait: bool = False,
               say: Callable[[str], None] | None = None, storage: api.StorageOptions | None = None,
               on_job: Callable[[int, WorkerRun], None] | None = None) -> WorkerRun:
    """Drain the queue (see the module docstring). ``wait``: also wait for jobs in backoff.
    ``storage``: options for opening the repositories (bandwidth limits, S3 endpoint).
    ``on_job(job id, run so far)``: called after each attempt, as it ends."""
    q = queue or UploadQueue()
    out = WorkerRun()
    lock_path().parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            out.busy = True
            return out
        while True:
            job = q.claim()
            if job is not None:
                _attempt(q, job, max_attempts, out, say, storage)
                if on_job is not None:
                    on_job(job.id, out)
                continue
            pending = q.jobs(("queued",))
            if wait and pending:
                time.sleep(max(0.0, min(j.not_before for j in pending) - time.time()) + 0.05)
                continue
            # let go, then look once more: a job queued while we held the lock was not given a
            # worker of its own (``spawn_worker`` saw ours), so it is ours to run
            fcntl.flock(fd, fcntl.LOCK_UN)
            if not [j for j in q.jobs(("queued",)) if j.not_before <= time.time()]:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                break  # another worker took over
        keep = {j.key for j in q.jobs(("queued", "running", "failed"))}
        for root in {Path(j.staged).parent.parent for j in q.jobs()} | {state_home() / "staging"}:
            staging.sweep([root], keep)
    finally:
        os.close(fd)
    return out


def _attempt(q: UploadQueue, job: Job, max_attempts: int, out: WorkerRun,
             say: Callable[[str], None] | None, storage: api.StorageOptions | None = None) -> None:
    try:
        snap, note, summary = _run_job(job, storage, max_attempts)
    except _TRANSIENT as exc:
        retry = None if job.attempts >= max_attempts else min(600.0, 5.0 * 2 ** (job.attempts - 1))
        q.fail(job, exc.message, retry_in=retry)
        out.errors[job.id] = exc.message
    except WeightvaultError as exc:  # a wrong password, a missing repository: no use retrying
        q.fail(job, exc.message, retry_in=None)
        out.errors[job.id] = exc.message
    else:
        q.finish(job, snap, note)
        staging.unpin(job.staged)
        out.done[job.id] = snap
        out.summaries[job.id] = summary
        if say is not None:
            say(f"job {job.id}: {job.record_as} -> snapshot {snap[:8]}")
        return
    if say is not None:
        say(f"job {job.id}: {job.record_as}: attempt {job.attempts} failed: {out.errors[job.id]}")


def wait_for(jobs: list[Job], queue: UploadQueue | None = None, timeout: float = 600.0) -> list[Job]:
    """Wait until each job is done or failed (or ``timeout`` seconds); returns them as they are."""
    q = queue or UploadQueue()
    deadline = time.monotonic() + timeout
    while True:
        now = [q.get(j.id) for j in jobs]
        if all(j.state in ("done", "failed") for j in now) or time.monotonic() >= deadline:
            return now
        time.sleep(0.1)
