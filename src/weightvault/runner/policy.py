"""Running a policy: ``policy apply``, ``tier run`` and ``status`` over the repositories it names.

The decisions are pure functions in ``weightvault.policy.plan``; this module carries them out on
a ``Fleet`` of open repositories, one step at a time, recording every step in the journal. A step
that fails is recorded and the others still run.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from weightvault.backends.factory import StorageOptions
from weightvault.errors import CheckFailedError, UsageError, ValidationFailedError, WeightvaultError, WrongPasswordError
from weightvault.ops.walk import Entry, walk_source
from weightvault.policy import journal as journal_mod
from weightvault.policy import plan as plan_mod
from weightvault.policy import spec as spec_mod
from weightvault.repository.snapshots import Snapshot
from weightvault.runner.defaults import default_key_file, default_repository_path, read_password_file

__all__ = ["Fleet", "PolicyRepo", "PolicyRun", "PolicyStep", "apply_policy", "policy_status", "tier_run"]


class PolicyRepo(Protocol):
    """What a policy run needs of a repository (``weightvault.api.Repository`` is one)."""

    def snapshots(self, *args: Any, **kwargs: Any) -> list[Snapshot]: ...

    def backup(self, *args: Any, **kwargs: Any) -> Any: ...

    def forget(self, *args: Any, **kwargs: Any) -> Any: ...

    def prune(self, *args: Any, **kwargs: Any) -> Any: ...

    def copy_to(self, *args: Any, **kwargs: Any) -> Any: ...

    def drill(self, *args: Any, **kwargs: Any) -> Any: ...

    def check(self, *args: Any, **kwargs: Any) -> Any: ...

    def ledger(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]: ...


Opener = Callable[[str, bytes | None, StorageOptions], PolicyRepo]  # None: through a KMS key file


@dataclass
class PolicyStep:
    """One step ``apply_policy`` or ``tier_run`` carried out (or, in a dry run, would)."""

    step: str  # backup | forget | prune | copy | tier-move | tier-expire | tier-keep | drill
    repository: str
    ok: bool
    detail: str
    source: str | None = None
    data_class: str | None = None
    snapshot: str | None = None
    time: str = ""
    exit_code: int = 0
    deferred: bool = False  # due, but outside every window its kind waits for (not run, still due)


@dataclass
class PolicyRun:
    steps: list[PolicyStep]
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


class Fleet:
    """The repositories a policy names, opened on first use with ``opener``. Passwords: the
    repository's ``password_file`` or ``password_env``; for the embedded default repository its key
    file; else ``$WEIGHTVAULT_PASSWORD``, else ``$WEIGHTVAULT_PASSWORD_FILE``."""

    def __init__(self, spec: spec_mod.PolicySpec, opener: Opener, storage: StorageOptions | None = None) -> None:
        self.spec = spec
        self.storage = storage or StorageOptions()
        self._opener = opener
        self._open: dict[str, PolicyRepo] = {}
        self._listed: dict[str, list[Snapshot]] = {}

    def __getitem__(self, name: str) -> PolicyRepo:
        if name not in self._open:
            r = self.spec.repositories[name]
            cls = {("azure_access_tier" if r.url.startswith("az://") else "s3_storage_class"): r.storage_class} \
                if r.storage_class else {}
            storage = StorageOptions(**{**self.storage.__dict__, "s3_endpoint": r.s3_endpoint or
                                        self.storage.s3_endpoint, **cls})
            pw = self._password(r)
            try:
                self._open[name] = self._opener(os.path.expanduser(r.url), pw, storage)
            except WrongPasswordError:
                if pw is not None:
                    raise
                raise UsageError(f"no password for repository {r.name}, and it has no KMS key that opens it",
                                 hint="give password_file or password_env in its [repositories] table") from None
        return self._open[name]

    def snapshots(self, name: str) -> list[Snapshot]:
        """The repository's snapshots, listed once until ``changed(name)`` says it changed."""
        if name not in self._listed:
            self._listed[name] = self[name].snapshots()
        return self._listed[name]

    def changed(self, *names: str) -> None:
        """Forget the listings of ``names`` (all of them with none named): each run starts afresh."""
        for n in names or list(self._listed):
            self._listed.pop(n, None)

    def _password(self, r: spec_mod.RepoSpec) -> bytes | None:
        """The repository's password, or None: it is to be opened through its KMS key file."""
        if r.password_file:
            return read_password_file(os.path.expanduser(r.password_file))
        if r.password_env:
            value = os.environ.get(r.password_env)
            if not value:
                raise UsageError(f"repository {r.name}: ${r.password_env} is not set",
                                 hint="set it, or give password_file in the policy")
            return value.encode()
        if Path(os.path.expanduser(r.url)) == default_repository_path() and default_key_file().exists():
            return read_password_file(default_key_file())
        env = os.environ.get("WEIGHTVAULT_PASSWORD")
        if env:
            return env.encode()
        if os.environ.get("WEIGHTVAULT_PASSWORD_FILE"):
            return read_password_file(os.path.expanduser(os.environ["WEIGHTVAULT_PASSWORD_FILE"]))
        return None


def journal_path(spec: spec_mod.PolicySpec) -> Path:
    if spec.settings.journal:
        return Path(os.path.expanduser(spec.settings.journal))
    return journal_mod.default_journal_path()


@dataclass
class _Run:
    """One apply or tier run in progress: where it records, what it says, what it did."""

    spec: spec_mod.PolicySpec
    fleet: Fleet
    clock: datetime
    dry_run: bool
    journal: Path | None
    say: Callable[[str], None] | None
    steps: list[PolicyStep]

    def deferred(self, kind: str, step: PolicyStep) -> bool:
        """With windows for ``kind`` (prune, tier, drill, copy) and none open now: record the step
        as waiting (not run, not journaled, so it stays due) and return True."""
        windows = [w for w in self.spec.windows.values() if kind in w.steps]
        if not windows or any(w.is_open(self.clock) for w in windows):
            return False
        opens = min(windows, key=lambda w: w.next_open(self.clock))
        when = opens.next_open(self.clock).astimezone(UTC).strftime("%Y-%m-%d %H:%MZ")
        step.deferred, step.detail = True, f"{step.detail}: waiting for window {opens.name} (opens {when})"
        self.steps.append(step)
        if self.say is not None:
            self.say(f"wait {step.step} {step.repository}: {step.detail}")
        return True

    def step(self, step: PolicyStep, action: Callable[[], str | None], quiet: bool = False) -> bool:
        """Run one step, recording its outcome (a WeightvaultError fails the step, not the run)."""
        step.time = self.clock.isoformat()
        try:
            detail = action()
            if detail:
                step.detail = detail
        except WeightvaultError as exc:
            step.ok, step.exit_code, step.detail = False, exc.exit_code, f"{step.detail}: failed: {exc.message}"
        finally:
            self.fleet.changed(step.repository)
        self.steps.append(step)
        if self.journal is not None:
            journal_mod.append_record(self.journal, {k: v for k, v in step.__dict__.items() if v is not None})
        if self.say is not None and not quiet:
            self.say(f"{'ok  ' if step.ok else 'FAIL'} {step.step} {step.repository}: {step.detail}")
        return step.ok


def _start(spec: spec_mod.PolicySpec, fleet: Fleet, now: datetime | None, dry_run: bool,
           say: Callable[[str], None] | None) -> _Run:
    fleet.changed()  # a Fleet may serve many runs: never plan on a listing from an earlier one
    return _Run(spec, fleet, now or datetime.now(UTC), dry_run, None if dry_run else journal_path(spec), say, [])


def apply_policy(spec: spec_mod.PolicySpec, fleet: Fleet, *, now: datetime | None = None, dry_run: bool = False,
                 say: Callable[[str], None] | None = None) -> PolicyRun:
    """Run what the policy says is due: backups per source and data class, retention (forget),
    prune (every ``settings.prune_every``), copies to replicas, ``tier_run``, restore drills, then
    repository checks (``[checks]``); steps of a kind a ``[windows]`` table lists wait for it.
    ``now`` (default: the clock) is also the time of new snapshots, so a schedule can be simulated."""
    run = _start(spec, fleet, now, dry_run, say)
    records = journal_mod.read_records(journal_path(spec))
    _backups(run, simulated=now is not None)
    _retention(run)
    _prunes(run, records)
    _copies(run)
    run.steps += _tiers(_start(spec, fleet, now, dry_run, say)).steps
    _drills(run, records)
    _checks(run, records)
    return PolicyRun(run.steps, dry_run)


def _backups(run: _Run, simulated: bool) -> None:
    snaps = {name: run.fleet.snapshots(name) for name in run.spec.repositories}
    for due in plan_mod.due_backups(run.spec, snaps, run.clock):
        src, dc = due.source, due.dc
        if src.host is not None and src.host != socket.gethostname():
            continue  # another machine holds these paths: its own apply backs them up
        step = PolicyStep("backup", src.repository, True, f"{src.name}/{dc.name}: {due.reason}", src.name, dc.name)
        if due.parent is None and class_has_files(run.spec, src, dc) is False:
            continue  # never an empty first snapshot: the class starts when its first file appears
        if run.dry_run:
            run.steps.append(step)
            continue

        def backup(src: spec_mod.SourceSpec = src, dc: spec_mod.DataClass = dc, due: plan_mod.BackupDue = due,
                   step: PolicyStep = step) -> str:
            res = run.fleet[src.repository].backup(
                src.abs_paths, tags=plan_mod.class_tags(src, dc), includes=dc.globs,
                excludes=run.spec.excludes_for(dc), parent=due.parent.id if due.parent else None,
                time=run.clock if simulated else None, lock_until=run.clock + dc.lock_for if dc.lock_for else None)
            step.snapshot = res.snapshot.id
            s = res.snapshot.summary
            return (f"{src.name}/{dc.name}: snapshot {res.snapshot.short_id}, {int(s.get('files', 0))} files,"
                    f" {int(s.get('stored_bytes_added', 0))} bytes added")

        run.step(step, backup)


def class_has_files(spec: spec_mod.PolicySpec, src: spec_mod.SourceSpec, dc: spec_mod.DataClass) -> bool | None:
    """Whether a source holds a file of class ``dc`` here (its globs, not an earlier class's);
    None if no path of the source exists on this machine (then nobody here can tell)."""
    found = False
    excludes = spec.excludes_for(dc)
    for p in src.abs_paths:
        if not os.path.lexists(p):
            continue
        found = True
        root = os.fsencode(p)
        for e in walk_source(root, os.path.basename(root) or root, excludes, False, list(dc.globs)):
            if isinstance(e, Entry) and not stat.S_ISDIR(e.st.st_mode) and e.rel != os.path.basename(root):
                return True
    return False if found else None


def _retention(run: _Run) -> None:
    """Per source and class, in every repository holding its snapshots (tiers, replicas)."""
    for src in run.spec.sources.values():
        for dc in run.spec.classes_of(src):
            tags = plan_mod.class_tags(src, dc)[:2]
            for name in run.spec.repositories:
                if not any(all(t in s.tags for t in tags) for s in run.fleet.snapshots(name)):
                    continue
                step = PolicyStep("forget", name, True, f"{src.name}/{dc.name}", src.name, dc.name)

                def forget(dc: spec_mod.DataClass = dc, tags: list[str] = tags, name: str = name) -> str:
                    res = run.fleet[name].forget(retention=dc.retention, tags=tags, now=run.clock,
                                                 dry_run=run.dry_run)
                    verb = "would remove" if run.dry_run else "removed"
                    return f"{tags[0][7:]}/{dc.name}: {verb} {len(res.removed)} snapshot(s)"

                run.step(step, forget, quiet=run.dry_run)


def _prunes(run: _Run, records: list[dict[str, Any]]) -> None:
    for name in run.spec.repositories:
        last = max((r["time"] for r in records if r.get("step") == "prune" and r.get("repository") == name
                    and r.get("ok")), default=None)
        if last is not None and datetime.fromisoformat(last) + run.spec.settings.prune_every > run.clock:
            continue

        def prune(name: str = name) -> str:
            res = run.fleet[name].prune(dry_run=run.dry_run)
            return (f"deleted {res.deleted_packs} pack(s), {res.deleted_bytes} bytes; {res.pending_packs} pending"
                    if not run.dry_run else f"would condemn {res.condemned_packs} pack(s)")

        if not run.deferred("prune", step := PolicyStep("prune", name, True, "prune")):
            run.step(step, prune)


def _copies(run: _Run) -> None:
    for src in run.spec.sources.values():
        for replica in src.replicate_to:
            ids = [s.id for s in run.fleet.snapshots(src.repository) if s.has_tag(f"source={src.name}")]
            if not ids:
                continue
            step = PolicyStep("copy", replica, True, f"{src.name}: {src.repository} -> {replica}", src.name)
            if _held(run, step):
                continue

            def copy(src: spec_mod.SourceSpec = src, replica: str = replica, ids: list[str] = ids) -> str:
                res = run.fleet[src.repository].copy_to(run.fleet[replica], ids)
                return (f"{src.name}: {len(res.copied)} snapshot(s) copied to {replica}, {len(res.skipped)} there;"
                        f" {res.packs_verified} pack(s) verified")

            run.step(step, copy)


def _due(run: _Run, records: list[dict[str, Any]], kind: str, name: str, repository: str, every: timedelta) -> bool:
    """Whether the named drill or check is due: no success of it journaled within ``every``."""
    last = max((r["time"] for r in records if r.get("step") == kind and r.get("ok") and str(
        r.get("detail", "")).startswith(f"{name}:") and r.get("repository") == repository), default=None)
    return last is None or datetime.fromisoformat(last) + every <= run.clock


def _held(run: _Run, step: PolicyStep) -> bool:
    """A due step that does not run now: it waits for its window, or this is a dry run (listed)."""
    if run.deferred(step.step, step):
        return True
    if run.dry_run:
        run.steps.append(step)
        return True
    return False


def _drills(run: _Run, records: list[dict[str, Any]]) -> None:
    for drill in run.spec.drills.values():
        if not _due(run, records, "drill", drill.name, drill.repository, drill.every):
            continue
        step = PolicyStep("drill", drill.repository, True, f"{drill.name}: level {drill.level}, pick {drill.pick}")
        if _held(run, step):
            continue

        def do_drill(drill: spec_mod.DrillSpec = drill, step: PolicyStep = step) -> str:
            res = run.fleet[drill.repository].drill(pick=drill.pick, within=drill.within, level=drill.level,
                                                    now=run.clock, record=False, check=drill.check)
            step.snapshot = res.snapshot
            if res.skipped:  # its data is in cold storage: a drill there costs money and hours
                return f"{drill.name}: snapshot {res.snapshot[:8]} {res.skipped}"
            if not res.ok:
                raise ValidationFailedError(f"{drill.name}: snapshot {res.snapshot[:8]}: {res.error}")
            return (f"{drill.name}: snapshot {res.snapshot[:8]} restored ({res.files} files) and validated at level"
                    f" {drill.level} in {res.rto_s:.1f} s (RTO)")

        run.step(step, do_drill)


def _checks(run: _Run, records: list[dict[str, Any]]) -> None:
    for chk in run.spec.checks.values():
        if not _due(run, records, "check", chk.name, chk.repository, chk.every):
            continue
        what = "every pack read" if chk.read_data else f"packs {chk.subset} read" if chk.subset else "structure"
        step = PolicyStep("check", chk.repository, True, f"{chk.name}: {what}")
        if _held(run, step):
            continue

        def do_check(chk: Any = chk, what: str = what) -> str:
            res = run.fleet[chk.repository].check(read_data=chk.read_data, subset=chk.subset)
            if not res.ok:
                raise CheckFailedError(f"{chk.name}: {len(res.errors)} problem(s), first: {res.errors[0]}")
            return f"{chk.name}: {what}: {res.packs_read} of {res.packs} pack(s) read, no problems"

        run.step(step, do_check)


def tier_run(spec: spec_mod.PolicySpec, fleet: Fleet, *, now: datetime | None = None, dry_run: bool = False,
             say: Callable[[str], None] | None = None) -> PolicyRun:
    """Move snapshots older than their repository's tier age down to the next tier their class
    passes through: copy (verified), then forget here; expire those whose class ends here. Before
    anything moves to an archive tier, a copy exists on a second site (else it stays put)."""
    return PolicyRun(_tiers(_start(spec, fleet, now, dry_run, say)).steps, dry_run)


def _tiers(run: _Run) -> _Run:
    spec, fleet, clock = run.spec, run.fleet, run.clock
    for repo in sorted(spec.repositories.values(), key=lambda r: spec_mod.TIERS.index(r.tier)):  # hot first
        snaps = {name: list(fleet.snapshots(name)) for name in spec.repositories}
        for plan in plan_mod.tier_plan(spec, repo, snaps[repo.name], clock):
            s = plan.snapshot
            step = PolicyStep(f"tier-{plan.action}", repo.name, True, f"{s.short_id}: {plan.reason}",
                              s.tag_dict().get("source"), s.tag_dict().get("class"), s.id)
            if plan.action != "keep" and run.deferred("tier", step):
                continue
            if run.dry_run or plan.action == "keep":
                run.steps.append(step)
                continue

            def act(plan: plan_mod.TierStep = plan, s: Snapshot = s,
                    snaps: dict[str, list[Snapshot]] = snaps) -> str | None:
                return _tier_step(run, plan, s, snaps)

            run.step(step, act)
    return run


def _tier_step(run: _Run, plan: plan_mod.TierStep, s: Snapshot, snaps: dict[str, list[Snapshot]]) -> str | None:
    src = run.fleet[plan.repo]
    if plan.action == "expire":
        src.forget([s.id], now=run.clock)
        return None
    assert plan.target is not None
    target = run.spec.repositories[plan.target]
    if target.tier == "archive":
        _second_site(run, snaps, plan.repo, target, s)
    if not any(plan_mod.lineage(x) == plan_mod.lineage(s) for x in snaps[plan.target]):
        src.copy_to(run.fleet[plan.target], [s.id])  # verified there before it is forgotten here
        run.fleet.changed(plan.target)
    if s.locked(run.clock):
        return f"{s.short_id}: copied to {plan.target}; kept here too: locked until {s.locked_until}"
    src.forget([s.id], now=run.clock)
    return None


def _second_site(run: _Run, snaps: dict[str, list[Snapshot]], here: str, archive: spec_mod.RepoSpec,
                 s: Snapshot) -> None:
    """Make sure that, once ``s`` leaves ``here`` for ``archive``, two sites hold it: copy it to a
    repository on another site first if needed (UsageError if none exists)."""
    spec, key = run.spec, plan_mod.lineage(s)
    sites = {archive.site} | {spec.repositories[n].site for n, ss in snaps.items()
                              if n != here and any(plan_mod.lineage(x) == key for x in ss)}
    if len(sites) >= 2:
        return
    other = [r for r in spec.repositories.values() if r.site not in sites and r.name != here and r.tier != "archive"]
    if not other:
        raise UsageError(f"snapshot {s.short_id} would be held by one site only ({archive.site}) once archived",
                         hint="add a repository on a second site (3-2-1: one copy offsite) to the policy")
    run.fleet[here].copy_to(run.fleet[other[0].name], [s.id])
    run.fleet.changed(other[0].name)


def policy_status(spec: spec_mod.PolicySpec, fleet: Fleet, *, now: datetime | None = None) -> list[plan_mod.RpoLine]:
    """Per source and class (primary) and per replica: the newest snapshot's age against the RPO,
    and when a snapshot of it there was last verified, from that repository's ledger (so every
    host sees the same, whoever ran the drill, verify or copy)."""
    used = {s.repository for s in spec.sources.values()} | {r for s in spec.sources.values() for r in s.replicate_to}
    fleet.changed()
    snaps = {name: fleet.snapshots(name) for name in sorted(used)}
    verified = {name: plan_mod.verified_snapshots(fleet[name].ledger()) for name in sorted(used)}
    return plan_mod.rpo_lines(spec, snaps, now or datetime.now(UTC), verified,
                              lambda src, dc: class_has_files(spec, src, dc) is False)
