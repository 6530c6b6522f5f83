"""Operations started from the dashboard, each in its own thread, with live progress.

A ``Job`` holds what the page shows: its kind and title, who started it, its state (``running``,
``ok``, ``failed``), the latest ``api.Progress`` (phase, files, bytes), the result in words and the
ledger record the operation appended. The operation itself is a function of a progress callback,
built by the page from ``weightvault.api`` calls only, so it does exactly what the CLI would. A
failure is a ``WeightvaultError``'s message and hint, never a traceback in the page.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weightvault import api
from weightvault.errors import WeightvaultError

__all__ = ["Job", "Jobs"]

log = logging.getLogger(__name__)

Work = Callable[[api.ProgressCallback], tuple[str, dict[str, Any] | None]]  # (result in words, ledger record)


@dataclass
class Job:
    id: str
    kind: str
    title: str
    user: str
    repository: str
    state: str = "running"
    phase: str = "starting"
    files_done: int = 0
    total_files: int = 0
    bytes_done: int = 0
    total_bytes: int = 0
    result: str = ""
    hint: str = ""
    record: dict[str, Any] | None = None
    started: float = field(default_factory=time.time)
    ended: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self) -> dict[str, Any]:
        """What the page and its event stream show (no secrets: the work's closure is not here)."""
        keys = ("id", "kind", "title", "user", "repository", "state", "phase", "files_done", "total_files",
                "bytes_done", "total_bytes", "result", "hint", "record", "started", "ended")
        return {k: getattr(self, k) for k in keys}


class Jobs:
    """The jobs of this process, newest first; one thread per job."""

    def __init__(self, keep: int = 200) -> None:
        self._jobs: dict[str, Job] = {}
        self._keep = keep
        self._lock = threading.Lock()

    def start(self, kind: str, title: str, user: str, repository: str, work: Work) -> Job:
        job = Job(secrets.token_hex(8), kind, title, user, repository)
        with self._lock:
            self._jobs[job.id] = job
            for old in list(self._jobs)[:-self._keep]:
                if self._jobs[old].state != "running":
                    del self._jobs[old]
        threading.Thread(target=self._run, args=(job, work), name=f"wv-web-{kind}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(reversed(self._jobs.values()))

    @staticmethod
    def _run(job: Job, work: Work) -> None:
        def progress(p: api.Progress) -> None:
            job.phase, job.files_done, job.total_files = p.phase or job.phase, p.files_done, p.total_files
            job.bytes_done, job.total_bytes = p.bytes_done, p.total_bytes

        try:
            job.result, job.record = work(progress)
            job.state = "ok"
        except WeightvaultError as exc:
            job.state, job.result, job.hint = "failed", exc.message, exc.hint or ""
        except Exception as exc:  # a bug: shown in a line, logged with its traceback
            log.exception("dashboard job %s (%s) failed", job.id, job.kind)
            job.state, job.result = "failed", f"internal error: {type(exc).__name__}: {exc}"
        finally:
            job.phase = "done"
            job.ended = time.time()
            job.done.set()
