"""Watched run directories: each complete checkpoint is handed off once (per content).

A watched root is scanned for **checkpoint units** (``units``): a directory holding
``trainer_state.json`` (Hugging Face), ``.metadata`` or ``*.distcp`` (DCP) or a shard index, at
any depth; any ``*.ckpt`` file (Lightning); and every other entry directly under the root whose
name holds a digit (``step_100/``, ``model-2000.pt``). Names starting with ``.`` or ``tmp`` are
skipped (work in progress, staging). A unit is **ready** when

1. no process holds any of its files open for writing (``openfiles.open_for_writing``), and
2. its format says it is complete (``api.checkpoint_completeness``), or, where the format says
   nothing, none of its files was modified in the last ``quiet`` seconds (by their mtimes, so a
   single pass from cron can tell too).

A ready unit whose fingerprint (relative paths, sizes, mtimes) differs from the one handed off last
is enqueued (``integrations.worker.enqueue``: pinned by hard links, one snapshot) with the tags
``run=<source>``, ``step=<N>`` (the name's ``step=N``, else its last digit run) and the source's
own; the fingerprint is then recorded in ``state_path`` (written atomically), so a restart hands
nothing off twice. A unit that is not ready keeps a reason, which ``pending`` reports.

Events come from watchdog's inotify observer; each marks the entry directly under its root that it
touched, and a poll rescans only those entries (and units still waiting for their quiet period),
so a log appended to every second costs a look at that one file, not at the whole tree. A full
rescan every ``rescan`` seconds catches what events missed (an overflowed queue, a network file
system).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault.agent.openfiles import open_for_writing
from weightvault.api import checkpoint_completeness
from weightvault.errors import WeightvaultError
from weightvault.integrations.queue import Job
from weightvault.integrations.worker import enqueue
from weightvault.paths import fsync_dir

__all__ = ["Handoff", "WatchedSource", "Watcher", "step_of", "units"]

log = logging.getLogger(__name__)
_STEP = re.compile(r"step[=_-]?(\d+)", re.IGNORECASE)
_DIGITS = re.compile(r"\d+")
_MARKERS = ("trainer_state.json", ".metadata")


@dataclass(frozen=True)
class WatchedSource:
    """A run directory to watch and where its checkpoints go."""

    name: str
    root: Path
    repository: str
    password_file: str | None = None
    tags: tuple[str, ...] = ()
    quiet: float = 30.0


@dataclass(frozen=True)
class Handoff:
    source: str
    unit: str
    step: int | None
    job: Job | None  # None when the hand-off failed (``error`` says why)
    error: str | None = None


@dataclass
class _Seen:
    fingerprint: str
    since: float  # when this fingerprint was first seen
    reason: str = ""


def step_of(name: str) -> int | None:
    m = _STEP.search(name)
    if m:
        return int(m.group(1))
    runs = _DIGITS.findall(name)
    return int(runs[-1]) if runs else None


def _skipped(name: str) -> bool:
    return name.startswith((".", "tmp"))


def units(root: Path) -> Iterator[Path]:
    """The checkpoint units under ``root`` (see the module docstring), never through symlinks."""
    try:
        names = sorted(e.name for e in os.scandir(root))
    except OSError:
        return
    for name in names:
        yield from entry_units(root / name)


def entry_units(p: Path) -> Iterator[Path]:
    """The units at or below one entry directly under a watched root."""
    if _skipped(p.name) or p.is_symlink():
        return
    if p.is_file():
        if p.name.endswith(".ckpt") or _DIGITS.search(p.name):
            yield p
    elif p.is_dir():
        if _is_unit_dir(p):
            yield p
            return
        found = list(_nested(p))
        if found:
            yield from found
        elif _DIGITS.search(p.name):
            yield p


def _is_unit_dir(d: Path) -> bool:
    try:
        names = os.listdir(d)
    except OSError:
        return False
    return any(n in _MARKERS or n.endswith((".distcp", ".index.json")) for n in names)


def _nested(d: Path) -> Iterator[Path]:
    """Units below a directory that is not one itself (``lightning_logs/version_0/checkpoints``)."""
    for dirpath, dirnames, filenames in os.walk(d):
        dirnames[:] = sorted(n for n in dirnames if not _skipped(n) and not os.path.islink(os.path.join(dirpath, n)))
        here = Path(dirpath)
        keep = []
        for n in dirnames:
            if _is_unit_dir(here / n):
                yield here / n
            else:
                keep.append(n)
        dirnames[:] = keep
        for n in sorted(filenames):
            if n.endswith(".ckpt") and not _skipped(n):
                yield here / n


def _entry_of(root: Path, unit: str) -> str:
    """The entry directly under ``root`` that holds ``unit``."""
    return os.path.relpath(unit, root).split(os.sep, 1)[0]


def _files(unit: Path) -> list[Path]:
    if unit.is_file():
        return [unit]
    return sorted(f for f in unit.rglob("*") if f.is_file() and not f.is_symlink())


def _fingerprint(unit: Path) -> tuple[str, float]:
    """(digest of the files' relative paths, sizes and mtimes; the newest mtime), one stat each."""
    h, newest = hashlib.sha256(), 0.0
    for f in _files(unit):
        st = f.stat()
        h.update(f"{f.relative_to(unit.parent)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        newest = max(newest, st.st_mtime)
    return h.hexdigest(), newest


@dataclass
class Watcher:
    """See the module docstring. Thread-safe: observer threads only mark roots dirty; ``poll``
    (one thread) does the scanning and the hand-offs."""

    sources: list[WatchedSource]
    state_path: Path
    rescan: float = 60.0
    clock: Callable[[], float] = time.time
    hand_off: Callable[..., Job] = enqueue
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _done: dict[str, str] = field(default_factory=dict)
    _dirty: dict[str, set[str]] = field(default_factory=dict)  # source -> entries under its root ("" = all)
    _last_full: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _observer: Any = None

    def __post_init__(self) -> None:
        try:
            self._done = dict(json.loads(self.state_path.read_text()).get("handed_off", {}))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("watch state %s unreadable (%s): checkpoints may be handed off again", self.state_path, exc)

    # -- events ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start watchdog's observer on every root (recursive)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        watcher = self

        class Handler(FileSystemEventHandler):
            def __init__(self, name: str, root: Path) -> None:
                self.name, self.root = name, str(root)

            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads (this agent's own among them) change nothing
                touched = {os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", "")) if p}
                if event.is_directory and event.event_type == "modified":
                    touched.discard(self.root)  # the root's own listing changed: the entry has its own event
                entries = {os.path.relpath(p, self.root).split(os.sep, 1)[0] for p in touched}
                with watcher._lock:
                    watcher._dirty.setdefault(self.name, set()).update(
                        "" if e in (".", "..") or e.startswith(".." + os.sep) else e for e in entries)

        self._observer = Observer()
        for s in self.sources:
            s.root.mkdir(parents=True, exist_ok=True)
            self._observer.schedule(Handler(s.name, s.root), str(s.root), recursive=True)
        self._observer.start()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(10)
            self._observer = None

    # -- scanning --------------------------------------------------------------------------------
    def poll(self) -> list[Handoff]:
        """Scan the roots with events (all of them every ``rescan`` seconds, and units still
        waiting for a quiet period), hand off what is ready; returns the hand-offs made."""
        now = self.clock()
        with self._lock:
            dirty, self._dirty = self._dirty, {}
        full = now - self._last_full >= self.rescan
        if full:
            self._last_full = now
        todo: dict[str, set[str] | None] = {}  # source -> entries to scan (None: all)
        for s in self.sources:
            marked = set(dirty.get(s.name, set()))
            marked |= {_entry_of(s.root, k.split("\0", 1)[1]) for k in self._seen if k.startswith(f"{s.name}\0")}
            if full or "" in marked:
                todo[s.name] = None
            elif marked:
                todo[s.name] = marked
        by_name = {s.name: s for s in self.sources}
        writers = open_for_writing([str(by_name[n].root) for n in todo]) if todo else set()
        out: list[Handoff] = []
        for name, entries in todo.items():
            s = by_name[name]
            found = units(s.root) if entries is None else (u for e in sorted(entries) for u in entry_units(s.root / e))
            present = set()
            for unit in found:
                key = f"{s.name}\0{unit}"
                present.add(key)
                h = self._consider(s, unit, key, writers, now)
                if h is not None:
                    out.append(h)
            for key in [k for k in self._seen if k.startswith(f"{s.name}\0") and k not in present
                        and (entries is None or _entry_of(s.root, k.split("\0", 1)[1]) in entries)]:
                del self._seen[key]  # gone (rotated away) before it was ready
        return out

    def pending(self) -> dict[str, str]:
        """Units not handed off yet: path -> why."""
        return {k.split("\0", 1)[1]: v.reason for k, v in self._seen.items()}

    def _consider(self, s: WatchedSource, unit: Path, key: str, writers: set[str], now: float) -> Handoff | None:
        try:
            fp, newest = _fingerprint(unit)
        except OSError:
            return None  # vanished while looked at: the next scan sees what is left
        if self._done.get(key) == fp:
            self._seen.pop(key, None)
            return None
        seen = self._seen.get(key)
        if seen is None or seen.fingerprint != fp:
            seen = self._seen[key] = _Seen(fp, now)
        real = os.path.realpath(unit)
        busy = sorted(w for w in writers if w == real or w.startswith(real.rstrip(os.sep) + os.sep))
        if busy:
            seen.reason = f"open for writing: {os.path.relpath(busy[0], real) if unit.is_dir() else unit.name}"
            return None
        verdict = checkpoint_completeness(unit)
        if verdict.complete is False:
            seen.reason = verdict.reason
            return None
        age = now - newest
        if verdict.complete is None and age < s.quiet:
            seen.reason = f"changed {max(age, 0):.0f}s ago; waiting for {s.quiet:.0f}s without changes"
            return None
        return self._hand_off(s, unit, key, fp)

    def _hand_off(self, s: WatchedSource, unit: Path, key: str, fp: str) -> Handoff:
        step = step_of(unit.name)
        tags = [f"run={s.name}", *([f"step={step}"] if step is not None else []), *s.tags]
        try:
            job = self.hand_off(s.repository, unit, tags, password_file=s.password_file, spawn=False)
        except (WeightvaultError, OSError) as exc:
            self._seen[key].reason = f"hand-off failed: {exc}"
            return Handoff(s.name, str(unit), step, None, str(exc))
        self._done[key] = fp
        self._seen.pop(key, None)
        self._save()
        return Handoff(s.name, str(unit), step, job)

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.tmp")
        with open(tmp, "w") as f:
            json.dump({"handed_off": self._done}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_path)
        fsync_dir(self.state_path.parent)
