"""The durable upload queue: checkpoints a training process hands off, for a worker process to
back up (``integrations.worker``).

One SQLite database, ``$XDG_STATE_HOME/weightvault/queue.sqlite`` (WAL, ``synchronous=FULL``: a
job is on disk when ``enqueue`` returns). A job names the repository (a location, and where its
password comes from: a password file, or the worker's environment / the default key file; never
the password itself), the staged directory to back up (``integrations.staging``), the path to
record it as, and the tags. Its ``key`` is also a snapshot tag (``wv-job=KEY``), which is how a
worker that finds a job still ``running`` after a crash tells whether the snapshot was committed:
a job never becomes two snapshots.

States: ``queued`` -> ``running`` -> ``done`` | ``queued`` again (a transient failure, with
``not_before`` for the backoff) | ``failed`` (after ``max_attempts``, or a permanent error);
``retry`` puts a failed job back, ``drop`` removes it (and its staging).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from weightvault.errors import UsageError
from weightvault.paths import state_home

__all__ = ["JOB_TAG", "Job", "UploadQueue", "default_queue_path", "new_key"]

JOB_TAG = "wv-job"
STATES = ("queued", "running", "done", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    repository TEXT NOT NULL,
    password_file TEXT,
    staged TEXT NOT NULL,
    record_as TEXT NOT NULL,
    tags TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    not_before REAL NOT NULL DEFAULT 0,
    error TEXT,
    snapshot TEXT,
    updated TEXT NOT NULL
)
"""


def new_key() -> str:
    return uuid.uuid4().hex


def default_queue_path() -> Path:
    """``$XDG_STATE_HOME/weightvault/queue.sqlite``."""
    return state_home() / "queue.sqlite"


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Job:
    id: int
    key: str
    created: str
    repository: str
    password_file: str | None
    staged: str
    record_as: str
    tags: list[str] = field(default_factory=list)
    state: str = "queued"
    attempts: int = 0
    not_before: float = 0.0
    error: str | None = None
    snapshot: str | None = None
    updated: str = ""

    @property
    def all_tags(self) -> list[str]:
        """The job's tags plus its ``wv-job=KEY`` tag."""
        return [*self.tags, f"{JOB_TAG}={self.key}"]

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


class UploadQueue:
    """The queue at ``path`` (default: ``$WEIGHTVAULT_QUEUE``, else ``default_queue_path()``). Safe
    to share between processes; each method is one transaction."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path or os.environ.get("WEIGHTVAULT_QUEUE") or default_queue_path())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def add(self, repository: str, staged: str, record_as: str, tags: list[str],
            password_file: str | None = None, key: str | None = None) -> Job:
        """Record a job (durably) and return it. ``key``: its unique key (default: a new one)."""
        for t in tags:
            if not t or "\n" in t or t.startswith(f"{JOB_TAG}="):
                raise UsageError(f"invalid tag {t!r}")
        key, now = key or new_key(), _now()
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO jobs (key, created, repository, password_file, staged, record_as, tags, state, updated)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (key, now, repository, password_file, staged, record_as, json.dumps(tags), now))
            job_id = cur.lastrowid
        assert job_id is not None
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UsageError(f"no job {job_id} in the queue", hint="`weightvault queue list` shows them")
        return _job(row)

    def jobs(self, states: tuple[str, ...] = STATES) -> list[Job]:
        """Jobs in the given states, oldest first."""
        marks = ",".join("?" * len(states))
        with self._db() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY id", states).fetchall()  # noqa: S608
        return [_job(r) for r in rows]

    def claim(self) -> Job | None:
        """The oldest runnable job (queued and past its backoff, or ``running`` left by a dead
        worker: the caller holds the worker lock, so any running job is orphaned), marked running."""
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE (state = 'queued' AND not_before <= ?) OR state = 'running'"
                             " ORDER BY id LIMIT 1", (time.time(),)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, updated = ? WHERE id = ?",
                       (_now(), row[0]))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (row[0],)).fetchone()
        return _job(row)

    def finish(self, job: Job, snapshot: str, note: str | None = None) -> None:
        """Done, with ``snapshot``; ``note`` a warning kept in ``error`` (e.g. files rewritten in place)."""
        self._set(job.id, state="done", snapshot=snapshot, error=note)

    def fail(self, job: Job, error: str, *, retry_in: float | None) -> None:
        """A failed attempt: queued again after ``retry_in`` seconds, or ``failed`` for good (None)."""
        if retry_in is None:
            self._set(job.id, state="failed", error=error)
        else:
            self._set(job.id, state="queued", error=error, not_before=time.time() + retry_in)

    def retry(self, job_id: int) -> Job:
        """Put a failed (or waiting) job back at once, its attempts reset."""
        job = self.get(job_id)
        if job.state not in ("failed", "queued"):
            raise UsageError(f"job {job_id} is {job.state}: only failed or queued jobs can be retried")
        self._set(job_id, state="queued", attempts=0, not_before=0.0)
        return self.get(job_id)

    def drop(self, job_id: int) -> Job:
        """Remove a job that is not running; returns it (the caller removes its staging)."""
        job = self.get(job_id)
        if job.state == "running":
            raise UsageError(f"job {job_id} is running", hint="stop the worker first, or wait for it")
        with self._db() as db:
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return job

    def _set(self, job_id: int, **values: object) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        with self._db() as db:
            db.execute(f"UPDATE jobs SET {cols}, updated = ? WHERE id = ?",  # noqa: S608
                       (*values.values(), _now(), job_id))


def _job(row: tuple[object, ...]) -> Job:
    (job_id, key, created, repository, password_file, staged, record_as, tags, state, attempts, not_before, error,
     snapshot, updated) = row
    return Job(int(str(job_id)), str(key), str(created), str(repository),
               None if password_file is None else str(password_file), str(staged), str(record_as),
               list(json.loads(str(tags))), str(state), int(str(attempts)), float(str(not_before)),
               None if error is None else str(error), None if snapshot is None else str(snapshot), str(updated))
