"""Which files under some directories a process holds open for writing (Linux ``/proc``).

For every readable ``/proc/<pid>/fd/<n>`` whose link resolves under one of the roots, the access
mode in ``/proc/<pid>/fdinfo/<n>`` (``flags:``, octal) says whether it was opened ``O_WRONLY`` or
``O_RDWR``. Processes this user may not inspect are skipped, so the agent should run as the user
who trains (or as root) for this check to see the writers. Elsewhere than Linux nothing is found.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["open_for_writing"]

_PROC = "/proc"


def open_for_writing(roots: Iterable[str], proc: str = _PROC) -> set[str]:
    """Real paths under ``roots`` that some process holds open for writing (this process included)."""
    prefixes = tuple(os.path.realpath(r).rstrip(os.sep) + os.sep for r in roots)
    found: set[str] = set()
    if not prefixes:
        return found
    try:
        pids = [d for d in os.listdir(proc) if d.isdigit()]
    except OSError:
        return found
    for pid in pids:
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if not target.startswith(prefixes) or not _writing(os.path.join(proc, pid, "fdinfo", fd)):
                continue
            found.add(target.removesuffix(" (deleted)"))
    return found


def _writing(fdinfo: str) -> bool:
    try:
        with open(fdinfo) as f:
            for line in f:
                if line.startswith("flags:"):
                    return int(line.split()[1], 8) & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
    except (OSError, ValueError, IndexError):
        return False
    return False
