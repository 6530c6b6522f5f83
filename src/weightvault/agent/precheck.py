"""Prechecks before a backup (the operating procedure's step 2): the repository answers within a
timeout, and a local repository's file system keeps ``min_free`` of its size free after the
checkpoint is added. A failed precheck defers the job (queued again with a backoff, the reason
kept as its error, where ``weightvault queue list`` and the notifications show it); the backup's
own space check still runs when it starts."""

from __future__ import annotations

import os
import shutil
import threading

from weightvault import api
from weightvault.errors import WeightvaultError

__all__ = ["MIN_FREE", "precheck"]

MIN_FREE = 0.10  # as ``backup`` keeps by default


def _reachable(location: str, storage: api.StorageOptions | None, timeout: float) -> str | None:
    result: list[object] = []

    def probe() -> None:
        try:
            result.append(api.repository_exists(location, storage))
        except WeightvaultError as exc:
            result.append(exc)
        except OSError as exc:
            result.append(exc)

    t = threading.Thread(target=probe, name="weightvault-precheck", daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        return f"{location} did not answer within {timeout:.0f} s"
    if isinstance(result[0], WeightvaultError):
        return result[0].message
    if isinstance(result[0], OSError):
        return f"{location}: {result[0].strerror or result[0]}"
    return None if result[0] else f"no repository at {location}"


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs
               if not os.path.islink(os.path.join(d, f)))


def precheck(location: str, staged: str | None = None, storage: api.StorageOptions | None = None,
             timeout: float = 30.0) -> str | None:
    """None if a backup into ``location`` (of the tree at ``staged``) may start; else why not."""
    why = _reachable(location, storage, timeout)
    if why is not None or "://" in location:
        return why
    usage = shutil.disk_usage(location)
    need = _size(staged) if staged and os.path.exists(staged) else 0
    if usage.free - need < MIN_FREE * usage.total:
        return (f"{location}: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB; adding up to"
                f" {need / 2**30:.2f} GiB would leave less than {MIN_FREE:.0%} free")
    return None
