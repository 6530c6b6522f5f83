"""Lightning: ``WeightvaultCheckpointIO`` protects every checkpoint a ``Trainer`` saves.

    from weightvault.integrations.lightning import WeightvaultCheckpointIO
    trainer = Trainer(plugins=[WeightvaultCheckpointIO(repo="/mnt/backup/wv", password_file="~/.wv-pass")])
    # or, to save in a background thread too: plugins=[AsyncCheckpointIO(WeightvaultCheckpointIO(...))]

It wraps any ``CheckpointIO`` (default ``TorchCheckpointIO``). ``save_checkpoint`` has the wrapped
IO write a temporary file beside the target, fsyncs it, renames it into place and fsyncs the
directory (a crash never leaves a half-written ``.ckpt`` under the real name), then hands the file
to the upload queue (tags ``run``, ``step``, ``epoch`` and the callback's ``tags``).
``load_checkpoint`` of a path that no longer exists here restores it first from the newest
snapshot of exactly that path. ``remove_checkpoint`` removes the local file only: the backups
stay. Needs lightning (``pip install 'weightvault[lightning]'``).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO

from weightvault.errors import SnapshotNotFoundError, WeightvaultError
from weightvault.integrations.queue import Job, UploadQueue
from weightvault.integrations.worker import enqueue, open_repository, wait_for
from weightvault.paths import fsync_dir

__all__ = ["WeightvaultCheckpointIO"]

log = logging.getLogger(__name__)


class WeightvaultCheckpointIO(CheckpointIO):
    """See the module docstring. ``strict``: a failed hand-off raises instead of being logged."""

    def __init__(self, repo: str | os.PathLike[str], *, password_file: str | None = None,
                 tags: list[str] | None = None, run: str | None = None, checkpoint_io: CheckpointIO | None = None,
                 strict: bool = False, queue: UploadQueue | None = None) -> None:
        super().__init__()
        self.repo, self.password_file, self.tags, self.run = os.fspath(repo), password_file, list(tags or []), run
        self.inner = checkpoint_io or TorchCheckpointIO()
        self.strict, self.queue = strict, queue
        self.jobs: list[Job] = []

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = os.path.abspath(os.fspath(path))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.wv-{secrets.token_hex(4)}")
        try:
            self.inner.save_checkpoint(checkpoint, tmp, storage_options=storage_options)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        fsync_dir(os.path.dirname(target))
        tags = [f"run={self.run or Path(target).parent.parent.name or 'run'}"]
        for key in ("global_step", "epoch"):
            if isinstance(checkpoint.get(key), int):
                tags.append(f"{'step' if key == 'global_step' else key}={checkpoint[key]}")
        try:
            self.jobs.append(enqueue(self.repo, target, [*tags, *self.tags], password_file=self.password_file,
                                     queue=self.queue))
        except WeightvaultError as exc:
            if self.strict:
                raise
            log.warning("weightvault: could not queue %s for backup: %s", target, exc.message)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        target = os.path.abspath(os.fspath(path))
        if not os.path.exists(target):
            self._restore(target)
        return self.inner.load_checkpoint(target, map_location=map_location, weights_only=weights_only)

    def _restore(self, target: str) -> None:
        repo = open_repository(self.repo, self.password_file)
        snaps = repo.snapshots(paths=[target])
        snaps = [s for s in snaps if s.paths == [target]]
        if not snaps:
            raise SnapshotNotFoundError(f"{target} is not here and no snapshot of it is in {self.repo}")
        repo.restore(snaps[-1].id, os.path.dirname(target), verify=True)
        log.info("weightvault: restored %s from snapshot %s", target, snaps[-1].short_id)

    def remove_checkpoint(self, path: Any) -> None:
        self.inner.remove_checkpoint(path)

    def teardown(self) -> None:
        self.inner.teardown()

    def wait(self, timeout: float = 600.0) -> list[Job]:
        """Wait for this IO's backups to finish (or ``timeout``); returns the jobs as they are."""
        return wait_for(self.jobs, self.queue, timeout=timeout)
