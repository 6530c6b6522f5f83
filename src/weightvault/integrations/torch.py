"""Plain PyTorch: ``weightvault.integrations.torch.save(obj, path, repo=...)`` for training loops
without a framework. ``torch.save`` into a temporary file beside ``path``, fsync, rename onto
``path``, fsync the directory (a crash leaves the old file or the new one, never half of one),
then ``enqueue`` the file for a worker process to back up. Needs torch (``pip install
weightvault[torch]``); imported only here."""

from __future__ import annotations

import os
import secrets
from typing import Any

from weightvault.integrations.queue import Job
from weightvault.integrations.worker import enqueue
from weightvault.paths import fsync_dir

__all__ = ["save"]


def save(obj: Any, path: str | os.PathLike[str], *, repo: str | os.PathLike[str], tags: list[str] | None = None,
         password_file: str | None = None, spawn: bool = True, **torch_kwargs: Any) -> Job:
    """Save ``obj`` with ``torch.save`` atomically at ``path`` and queue its backup into ``repo``."""
    import torch

    target = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.wv-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f, **torch_kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(os.path.dirname(target))
    return enqueue(repo, target, tags, password_file=password_file, spawn=spawn)
