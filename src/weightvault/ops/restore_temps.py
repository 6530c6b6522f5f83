"""A restore's temporary names, and which of them an earlier, interrupted restore left behind.

Every restored file is written under a temporary name first and renamed into place only once it
is whole, so a crash leaves ``.wvtmp-*`` files, never a half-written file under a real name. The
name says who wrote it: ``.wvtmp-<host>-<boot>-<pid>-<random>-<n>`` (a hash of the host name, the
kernel's boot id, the process id). A restore that opens a directory which already existed removes
the temporary files there whose writer is gone: made on this host in an earlier boot, or in this
boot by a process that no longer runs. Those of other hosts (a shared file system) and of live
processes are left alone, as are names of any other form.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import stat

__all__ = ["TMP_PREFIX", "is_stale", "sweep", "tmp_name"]

TMP_PREFIX = b".wvtmp-"


def _boot_id() -> bytes:
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().strip().replace(b"-", b"")[:8] or b"0" * 8
    except OSError:
        return b"0" * 8


_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8].encode()
_BOOT = _boot_id()
_RANDOM = secrets.token_hex(3).encode()
_SEQ = itertools.count()  # next() on a count is atomic


def tmp_name() -> bytes:
    """A temporary name no other restore uses (opened with ``O_EXCL`` all the same)."""
    return b"%s%s-%s-%d-%s-%x" % (TMP_PREFIX, _HOST, _BOOT, os.getpid(), _RANDOM, next(_SEQ))


def is_stale(name: bytes) -> bool:
    """True if ``name`` is a temporary file of a restore on this host that is no longer running."""
    if not name.startswith(TMP_PREFIX):
        return False
    parts = name[len(TMP_PREFIX):].split(b"-")
    if len(parts) != 5 or parts[0] != _HOST or not parts[2].isdigit():
        return False
    if parts[1] != _BOOT:
        return True  # written before this machine last booted: that process is gone
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def sweep(dir_fd: int) -> int:
    """Unlink the stale temporary files (``is_stale``) in the directory ``dir_fd``; the number.
    Housekeeping only: a file it cannot list or remove is left, never an error."""
    n = 0
    try:
        with os.scandir(dir_fd) as it:
            names = [e.name for e in it if e.name.startswith(TMP_PREFIX.decode())]
    except OSError:
        return 0
    for name in names:
        raw = os.fsencode(name)
        if not is_stale(raw):
            continue
        try:
            if stat.S_ISREG(os.stat(raw, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                os.unlink(raw, dir_fd=dir_fd)
                n += 1
        except OSError:
            continue
    return n
