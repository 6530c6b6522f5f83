"""``weightvault agent`` / ``weightvault watch``: the long-running loop.

One agent per state directory (``<state>/agent.lock``, ``flock``: released by the kernel if the
agent dies). Watched run directories are scanned (``watch.Watcher``) by a thread of their own, twice a second,
and complete checkpoints handed off (pinned) at once, also while a backup runs. Each turn of the
main loop, about once a second:

1. after SIGHUP, the policy file is read again; an invalid one is refused (``policy.reload_failed``
   naming the line) and the old policy stays;
2. (``once``: the watched directories are scanned here);
3. the upload queue is drained in this process (``integrations.worker.run_worker``): one snapshot
   per job, exactly once, after its prechecks (``precheck``: the repository answers, space stays
   free); a failed precheck defers the job by ``PRECHECK_RETRY`` seconds (``precheck_failed``);
4. every ``interval`` seconds, the policy's due steps run (``api.apply_policy``).

SIGTERM and SIGINT stop the agent: between operations at once; during one (a backup, a policy
step) the operation is interrupted as Ctrl-C would interrupt it, which every operation survives
(packs already uploaded stay and the next backup adopts them; a job being backed up stays in the
queue and the next start runs it again, reusing those uploads). ``once`` runs a single turn (all
roots scanned, the queue drained, due steps run) and returns, for cron or a systemd timer.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from weightvault import api
from weightvault.agent.events import EventLog
from weightvault.agent.metrics import Metrics, MetricsServer
from weightvault.agent.notify import Notifier
from weightvault.agent.precheck import precheck
from weightvault.agent.watch import WatchedSource, Watcher
from weightvault.errors import ConfigFileError, RepositoryLockedError, UsageError, WeightvaultError
from weightvault.failover.config import load_config as load_failover
from weightvault.failover.controller import Controller
from weightvault.integrations.queue import UploadQueue
from weightvault.integrations.worker import WorkerRun, run_worker
from weightvault.paths import state_home

__all__ = ["Agent", "AgentOptions", "AgentStop"]


PRECHECK_RETRY = 60.0  # seconds before a job whose precheck failed is tried again


class AgentStop(BaseException):
    """Raised in the main thread by SIGTERM or SIGINT while an operation runs."""


@dataclass
class AgentOptions:
    policy: Path | None = None  # the policy file (watched sources, due steps)
    watch: list[Path] = field(default_factory=list)  # roots watched without a policy (``weightvault watch``)
    repository: str | None = None  # where those roots' checkpoints go
    password_file: str | None = None
    tags: tuple[str, ...] = ()
    quiet: float = 30.0
    once: bool = False
    interval: float = 30.0  # seconds between runs of the policy's due steps
    rescan: float = 60.0  # seconds between full rescans of the watched roots
    state_dir: Path | None = None
    storage: api.StorageOptions | None = None  # bandwidth limits, S3 endpoint: for every repository
    metrics_listen: str | None = None  # HOST:PORT for /metrics and /healthz
    metrics_textfile: Path | None = None  # a directory for node-exporter's textfile collector
    precheck_timeout: float = 30.0  # seconds the repository has to answer before a backup


class Agent:
    """See the module docstring."""

    def __init__(self, opts: AgentOptions, log: EventLog) -> None:
        if not opts.policy and not opts.watch:
            raise UsageError("nothing to do: give a policy file (--policy) or directories to watch")
        if opts.watch and not opts.repository:
            raise UsageError("watched directories need a repository", hint="give --repo (or $WEIGHTVAULT_REPO)")
        self.opts, self.log = opts, log
        self.state_dir = opts.state_dir or state_home() / "agent"
        self.spec: Any = None
        self.watcher: Watcher | None = None
        self._watch_lock = threading.Lock()  # the watcher is polled by its thread, swapped by reloads
        self._watch_thread: threading.Thread | None = None
        self._upload_queue: UploadQueue | None = None
        self.notifier: Notifier | None = None
        self._breached: set[tuple[str, str, str]] = set()
        self.metrics: Metrics | None = None
        self.metrics_server: MetricsServer | None = None
        self._stop = threading.Event()
        self._reload = False
        self._busy = False
        self._next_policy = 0.0
        self.turns = 0
        self._failover_thread: threading.Thread | None = None

    # -- control -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to stop at its next safe point (any thread)."""
        self._stop.set()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload = True
            return
        self.log.emit("agent.stopping", signal=signal.Signals(signum).name, interrupting=self._busy)
        self._stop.set()
        if self._busy:
            raise AgentStop

    @contextmanager
    def _operation(self) -> Iterator[None]:
        self._busy = True
        try:
            yield
        finally:
            self._busy = False

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Run until stopped (or one turn with ``once``); returns the exit code: 0, or 1 when a
        step failed in a ``once`` run."""
        with self._instance_lock():
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, self._on_signal)
            self._configure(self._load_policy() if self.opts.policy else None)
            self._start_metrics()
            self.log.emit("agent.start", pid=os.getpid(), policy=str(self.opts.policy) if self.opts.policy else None,
                          watched=[str(s.root) for s in (self.watcher.sources if self.watcher else [])],
                          once=self.opts.once or None)
            failed = False
            try:
                if not self.opts.once:
                    if self.watcher is not None:
                        self.watcher.start()
                    self._watch_thread = threading.Thread(target=self._watch_loop, name="weightvault-watch",
                                                          daemon=True)
                    self._watch_thread.start()
                    if self.spec is not None and self.spec.failover:
                        self._failover_thread = threading.Thread(target=self._failover_loop, args=(self.spec.failover,),
                                                                 name="weightvault-failover", daemon=True)
                        self._failover_thread.start()
                while not self._stop.is_set():
                    failed = self._turn() or failed
                    self.turns += 1
                    self._update_metrics()
                    if self.opts.once:
                        break
                    self._stop.wait(1.0)
            except AgentStop:
                pass
            finally:
                self._stop.set()
                if self._watch_thread is not None:
                    self._watch_thread.join(30)
                if self._failover_thread is not None:
                    self._failover_thread.join(30)
                if self.watcher is not None:
                    self.watcher.stop()
                self.log.emit("agent.stop", turns=self.turns)
                self._set_notifier(None)
                if self.metrics is not None:
                    self.metrics.stopped()
                if self.metrics_server is not None:
                    self.metrics_server.close()
            return 1 if failed and self.opts.once else 0

    @contextmanager
    def _instance_lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / "agent.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise RepositoryLockedError(f"another agent (pid {other or '?'}) runs with the state directory"
                                            f" {self.state_dir}", hint="stop it first, or give --state-dir") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def _turn(self) -> bool:
        """One turn (see the module docstring); True if something failed."""
        if self._reload:
            self._reload = False
            self._reload_policy()
        failed = self._poll_watch() if self.opts.once else False
        failed = self._drain() or failed
        if self.spec is not None and time.monotonic() >= self._next_policy:
            self._next_policy = time.monotonic() + self.opts.interval
            failed = self._apply() or failed
        return failed

    def _queue(self) -> UploadQueue:
        if self._upload_queue is None:
            self._upload_queue = UploadQueue()  # opened once: its path comes from the environment
        return self._upload_queue

    def _watch_loop(self) -> None:
        """The watch thread: hand checkpoints off as soon as they are complete, also while the
        main thread is busy with a backup (so a rotation cannot take one before it is pinned)."""
        while not self._stop.is_set():
            try:
                self._poll_watch()
            except Exception as exc:  # a scan that fails (a vanished mount) is retried next time
                self.log.emit("watch.error", "error", error=str(exc))
            self._stop.wait(0.5)

    def _poll_watch(self) -> bool:
        failed = False
        with self._watch_lock:
            if self.watcher is None:
                return False
            if self.opts.once:
                self.watcher.rescan = 0.0
            handoffs = self.watcher.poll()
        for h in handoffs:
            if h.job is None:
                failed = True
                self.log.emit("handoff.failed", "error", source=h.source, path=h.unit, error=h.error)
            else:
                self.log.emit("handoff", source=h.source, path=h.unit, step=h.step, job=h.job.id)
        return failed

    def _drain(self) -> bool:
        q = self._queue()
        waiting = [j for j in q.jobs(("queued", "running")) if j.not_before <= time.time()]
        if not waiting:
            return False
        deferred = False
        for j in list(waiting):
            why = precheck(j.repository, j.staged, self.opts.storage, self.opts.precheck_timeout)
            if why is not None:
                q.fail(j, f"precheck failed: {why}", retry_in=PRECHECK_RETRY)
                waiting.remove(j)
                deferred = True
                self.log.emit("precheck_failed", "error", source=_tag(j.tags, "run"), path=j.record_as,
                              repository=j.repository, reason=why, retry_in_s=PRECHECK_RETRY)
        if not waiting:
            return deferred
        for j in waiting:
            self.log.emit("backup.start", source=_tag(j.tags, "run"), path=j.record_as, step=_tag(j.tags, "step"),
                          repository=j.repository)
        with self._operation():
            res = run_worker(q, storage=self.opts.storage, on_job=lambda job_id, run: self._job_done(q, job_id, run))
        return bool(res.errors) or deferred

    def _job_done(self, q: UploadQueue, job_id: int, res: WorkerRun) -> None:
        """Report one job as soon as its attempt ends (not when the whole queue is drained)."""
        j = q.get(job_id)
        if job_id in res.done:
            summary = res.summaries.get(job_id, {})
            self.log.emit("backup.success", source=_tag(j.tags, "run"), path=j.record_as,
                          snapshot=res.done[job_id][:8], step=_tag(j.tags, "step"), repository=j.repository,
                          files=summary.get("files"), bytes=summary.get("bytes"),
                          stored_bytes_added=summary.get("stored_bytes_added"), duration_s=summary.get("duration_s"),
                          lag_s=_lag(j.created))
        elif job_id in res.errors:
            self.log.emit("backup.error", "error", source=_tag(j.tags, "run"), path=j.record_as,
                          error=res.errors[job_id], attempts=j.attempts, retrying=j.state == "queued")

    def _apply(self) -> bool:
        with self._operation():
            try:
                run = api.apply_policy(self.spec, fleet=api.Fleet(self.spec, self.opts.storage))
            except WeightvaultError as exc:
                self.log.emit("policy.error", "error", error=exc.message)
                return True
        for st in run.steps:
            if st.deferred:
                self.log.emit("window.waiting", step=st.step, repository=st.repository, source=st.source,
                              detail=st.detail)
                continue
            self.log.emit(f"{_kind(st.step)}.{'success' if st.ok else 'error'}", "info" if st.ok else "error",
                          step=st.step, repository=st.repository, source=st.source, data_class=st.data_class,
                          snapshot=st.snapshot[:8] if st.snapshot else None, detail=st.detail)
        return self._check_rpo() or not run.ok

    def _check_rpo(self) -> bool:
        """``rpo_breach`` once per breach (again only after it was met in between)."""
        try:
            lines = api.policy_status(self.spec, fleet=api.Fleet(self.spec, self.opts.storage))
        except WeightvaultError as exc:
            self.log.emit("policy.error", "error", error=exc.message)
            return True
        if self.metrics is not None:
            self.metrics.rpo_lines(lines)
        now = set()
        for ln in lines:
            if not ln.breached:
                continue
            key = (ln.source, ln.dc or "*", ln.repository)
            now.add(key)
            if key not in self._breached:
                self.log.emit("rpo_breach", "error", source=ln.source, data_class=ln.dc, repository=ln.repository,
                              age_s=None if ln.age_s is None else round(ln.age_s), rpo_s=round(ln.rpo_s))
        self._breached = now
        return bool(now)

    def _start_metrics(self) -> None:
        if not self.opts.metrics_listen and not self.opts.metrics_textfile:
            return
        self.metrics = Metrics(self.opts.metrics_textfile)
        self.log.listeners.append(self.metrics)
        if self.opts.metrics_listen:
            self.metrics_server = MetricsServer(self.metrics, self.opts.metrics_listen)
            self.log.emit("metrics.listening", address=self.metrics_server.address)

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        counts: dict[str, int] = {}
        for j in self._queue().jobs():
            counts[j.state] = counts.get(j.state, 0) + 1
        self.metrics.queue(counts)
        self.metrics.write()

    # -- configuration -------------------------------------------------------------------------------
    def _failover_loop(self, config: str) -> None:
        """The policy's ``[failover]``: the controller of ``weightvault failover run`` in this
        process, its events as ``failover.<kind>`` agent events (logged, notified, counted)."""
        try:
            ctl = Controller(load_failover(Path(config)))
        except WeightvaultError as exc:
            self.log.emit("failover.error", "error", error=exc.message, config=config)
            return
        levels = {"no-healthy-region": "error", "restore-failed": "error", "actuate-failed": "error",
                  "failover": "warning", "unhealthy": "warning"}
        try:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    events = ctl.round()
                except (WeightvaultError, OSError) as exc:
                    self.log.emit("failover.error", "error", error=str(exc))
                    events = []
                for e in events:
                    self.log.emit(f"failover.{e.kind}", levels.get(e.kind, "info"), region=e.region, reason=e.reason,
                                  routing=",".join(f"{k}={v}" for k, v in sorted(e.routing.items())))
                self._stop.wait(max(0.0, ctl.cfg.interval - (time.monotonic() - start)))
        finally:
            ctl.close()

    def _load_policy(self) -> Any:
        assert self.opts.policy is not None
        return api.load_policy(self.opts.policy)

    def _reload_policy(self) -> None:
        try:
            spec = self._load_policy()
        except ConfigFileError as exc:
            self.log.emit("policy.reload_failed", "error", error=exc.message, kept="the policy loaded before")
            return
        with self._watch_lock:
            old = self.watcher
            self._configure(spec)
            if old is not None:
                old.stop()
            if self.watcher is not None and not self.opts.once:
                self.watcher.start()
        self._next_policy = 0.0
        self.log.emit("policy.reloaded", policy=str(self.opts.policy),
                      watched=[str(s.root) for s in (self.watcher.sources if self.watcher else [])])

    def _set_notifier(self, specs: list[Any] | None) -> None:
        if self.notifier is not None:
            self.log.listeners.remove(self.notifier)
            self.notifier.close()
            self.notifier = None
        if specs:
            self.notifier = Notifier(specs, self.log)
            self.log.listeners.append(self.notifier)

    def _configure(self, spec: Any) -> None:
        self.spec = spec
        self._set_notifier(spec.notify if spec is not None else None)
        sources = [WatchedSource(p.name, p.resolve(), str(self.opts.repository), self.opts.password_file,
                                 self.opts.tags, self.opts.quiet) for p in self.opts.watch]
        if spec is not None:
            for src in spec.sources.values():
                if not src.watch:
                    continue
                repo = spec.repositories[src.repository]
                for path in src.abs_paths:
                    sources.append(WatchedSource(src.name, Path(path), repo.url, repo.password_file, tuple(src.tags),
                                                 src.quiet.total_seconds()))
        self.watcher = Watcher(sources, self.state_dir / "watch.json", rescan=self.opts.rescan) if sources else None


def _lag(created: str) -> float | None:
    """Seconds from a job's hand-off to now (its snapshot just committed): the RPO lag."""
    try:
        return round((datetime.now(UTC) - datetime.fromisoformat(created)).total_seconds(), 3)
    except ValueError:
        return None


def _tag(tags: list[str], key: str) -> str | None:
    return next((t.split("=", 1)[1] for t in tags if t.startswith(f"{key}=")), None)


def _kind(step: str) -> str:
    """backup | prune | copy | tier | drill (forget counts as prune), for event names."""
    return {"forget": "prune", "tier-move": "tier", "tier-expire": "tier", "tier-keep": "tier"}.get(step, step)


