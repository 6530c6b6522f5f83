#!/usr/bin/env python3
"""What an idle agent costs, and what the watcher costs on a large run directory.

    .venv/bin/python bench/agent_idle.py [--seconds 600] [--files 10000] [--work DIR]

1. **Idle**: a real ``weightvault watch`` process on 3 run directories (each with a few finished
   checkpoints already backed up), metrics served, nothing changing, for ``--seconds``: its CPU
   time (utime + stime from ``/proc/<pid>/stat``) over that span, as a share of one core, and its
   RSS (``VmRSS``, ``VmHWM``) at the end.
2. **Large directory**: a run directory of ``--files`` files (100 checkpoint directories of
   ``files / 100`` files each, all already handed off): the time of a full rescan (every unit
   fingerprinted), the time of a scan after one file changed (what an inotify event costs), and
   the time to set up the inotify watches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
PASSWORD = "bench password"  # noqa: S105 - a throwaway benchmark repository


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(key)) // 1024


def idle(work: Path, seconds: float) -> dict[str, float]:
    env = {**os.environ, "XDG_STATE_HOME": str(work / "state"), "WEIGHTVAULT_PASSWORD": PASSWORD,
           "PYTHONPATH": str(ROOT / "src")}
    dirs = []
    for i in range(3):
        d = work / f"run{i}"
        for step in (100, 200):
            c = d / f"checkpoint-{step}"
            c.mkdir(parents=True)
            (c / "model.bin").write_bytes(os.urandom(1_000_000))
            (c / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        dirs.append(str(d))
    log = open(work / "idle.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "weightvault", "-r", str(work / "repo"), "watch", *dirs,
                             "--metrics-listen", "127.0.0.1:0", "--log-format", "json"], env=env, stderr=log)
    deadline = time.monotonic() + 120
    while (work / "idle.log").read_text().count('"backup.success"') < 6 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(5)  # settled: everything handed off and backed up
    cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = _cpu_s(proc.pid), time.monotonic()
    out = {"seconds": round(t1 - t0, 1), "cpu_s": round(cpu1 - cpu0, 3),
           "cpu_share_of_one_core": (cpu1 - cpu0) / (t1 - t0), "rss_mib": _status(proc.pid, "VmRSS"),
           "hwm_mib": _status(proc.pid, "VmHWM")}
    proc.terminate()
    proc.wait(60)
    log.close()
    return out


def large(work: Path, files: int) -> dict[str, float]:
    from weightvault.agent.watch import WatchedSource, Watcher

    root = work / "large"
    per = max(1, files // 100)
    for c in range(100):
        d = root / f"step_{c:05d}"
        d.mkdir(parents=True)
        for i in range(per):
            (d / f"part-{i:04d}.json").write_text("{}")
    old = time.time() - 3600
    for p in root.rglob("*"):
        os.utime(p, (old, old))

    handed: list[Path] = []

    def hand_off(repo: str, unit: Path, tags: list[str], **kw: object) -> object:
        handed.append(unit)
        return object()

    w = Watcher([WatchedSource("large", root, str(work / "repo"), quiet=1.0)], work / "large-watch.json", rescan=0.0,
                hand_off=hand_off)  # type: ignore[arg-type]
    t = time.perf_counter()
    w.poll()  # the first scan hands every unit off
    first = time.perf_counter() - t
    assert len(handed) == 100
    full = []
    for _ in range(5):
        t = time.perf_counter()
        w.poll()
        full.append(time.perf_counter() - t)
    t = time.perf_counter()
    w.start()
    setup = time.perf_counter() - t
    w.rescan = 3600.0
    w.poll()  # the rescan clock starts now: later polls scan only roots with events
    changed = []
    for i in range(5):
        (root / "step_00042" / "part-0000.json").write_text(json.dumps({"i": i}))
        time.sleep(0.3)  # the event arrives
        t = time.perf_counter()
        w.poll()
        changed.append(time.perf_counter() - t)
    w.stop()
    return {"files": 100 * per, "first_scan_s": round(first, 3), "full_rescan_s": statistics.median(full),
            "event_scan_s": statistics.median(changed), "inotify_setup_s": round(setup, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="wv-agent-idle-"))
    from weightvault.api import KdfParams, Repository

    Repository.init(work / "repo", PASSWORD, kdf=KdfParams(65536, 3, 1))
    big = large(work, a.files)
    print(json.dumps({"large": big}), flush=True)
    quiet = idle(work, a.seconds)
    print(json.dumps({"idle": quiet}), flush=True)
    print(f"\n| | value |\n|---|---:|\n"
          f"| idle agent, 3 watched directories: CPU over {quiet['seconds']:.0f} s | {quiet['cpu_s']:.2f} s"
          f" ({100 * quiet['cpu_share_of_one_core']:.2f} % of one core) |\n"
          f"| idle agent: RSS / peak RSS | {quiet['rss_mib']} / {quiet['hwm_mib']} MiB |\n"
          f"| {big['files']} files in 100 checkpoint directories: first scan (all handed off) |"
          f" {big['first_scan_s'] * 1000:.0f} ms |\n"
          f"| the same, full rescan (nothing new) | {big['full_rescan_s'] * 1000:.0f} ms |\n"
          f"| the same, scan after one file changed (an inotify event) | {big['event_scan_s'] * 1000:.0f} ms |\n"
          f"| inotify watches set up | {big['inotify_setup_s'] * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
