"""Hugging Face ``Trainer``: ``WeightvaultCallback`` protects every checkpoint it saves.

    from weightvault.integrations.transformers import WeightvaultCallback
    trainer = Trainer(..., callbacks=[WeightvaultCallback(repo="/mnt/backup/wv", password_file="~/.wv-pass")])

``on_save`` (the Trainer has written ``checkpoint-N/`` and rotated old ones) hands the checkpoint
to the upload queue (``integrations.worker.enqueue``: hard links, a few milliseconds) with the
tags ``run`` (the run name, else the output directory's name), ``step``, ``epoch``, ``loss`` (the
last logged training loss) and, when the Trainer tracks one, the metric (``eval_loss=...``), plus
the callback's own ``tags``. A detached worker process uploads it. ``on_train_end`` waits (up to
``timeout`` seconds, with ``wait_at_end``) for the queue to drain and logs what was protected. A
failure is logged, never stops training, unless ``strict``: then the next save (or the end of
training) raises it. Only the main process (``state.is_world_process_zero``) hands off. Needs
transformers (``pip install 'weightvault[hf]'``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from weightvault.errors import WeightvaultError
from weightvault.integrations.queue import Job, UploadQueue
from weightvault.integrations.worker import enqueue, wait_for

__all__ = ["WeightvaultCallback"]

log = logging.getLogger(__name__)


class WeightvaultCallback(TrainerCallback):
    """Back up every ``every``-th checkpoint the Trainer saves (see the module docstring)."""

    def __init__(self, repo: str | os.PathLike[str], *, password_file: str | None = None, tags: list[str] | None = None,
                 every: int = 1, wait_at_end: bool = True, strict: bool = False, timeout: float = 600.0,
                 queue: UploadQueue | None = None) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.repo, self.password_file = os.fspath(repo), password_file
        self.tags, self.every, self.wait_at_end, self.strict, self.timeout = list(tags or []), every, wait_at_end, \
            strict, timeout
        self.queue = queue
        self.jobs: list[Job] = []
        self._saves = 0

    def _tags(self, args: Any, state: Any) -> list[str]:
        run = args.run_name or Path(args.output_dir).name
        out = [f"run={run}", f"step={state.global_step}"]
        if state.epoch is not None:
            out.append(f"epoch={state.epoch:.4g}")
        losses = [h["loss"] for h in state.log_history if "loss" in h]
        if losses:
            out.append(f"loss={losses[-1]:.6g}")
        if getattr(args, "metric_for_best_model", None) and state.best_metric is not None:
            out.append(f"{args.metric_for_best_model}={state.best_metric:.6g}")
        return [*out, *self.tags]

    def _check(self) -> None:
        """With ``strict``: raise the first failed job."""
        if not self.strict or not self.jobs:
            return
        q = self.queue or UploadQueue()
        bad = [j for j in (q.get(j.id) for j in self.jobs) if j.state == "failed"]
        if bad:
            raise WeightvaultError(f"the backup of {bad[0].record_as} failed: {bad[0].error}",
                                   hint="`weightvault queue list` shows it; `queue retry` runs it again")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero:
            return control
        self._check()
        self._saves += 1
        if (self._saves - 1) % self.every:
            return control
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not ckpt.is_dir():
            log.warning("weightvault: %s is not there: nothing to back up", ckpt)
            return control
        try:
            self.jobs.append(enqueue(self.repo, ckpt, self._tags(args, state), password_file=self.password_file,
                                     queue=self.queue))
        except WeightvaultError as exc:
            if self.strict:
                raise
            log.warning("weightvault: could not queue %s for backup: %s", ckpt, exc.message)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not state.is_world_process_zero or not self.jobs or not self.wait_at_end:
            return control
        now = wait_for(self.jobs, self.queue, timeout=self.timeout)
        done = [j for j in now if j.state == "done"]
        level = logging.INFO if len(done) == len(now) else logging.WARNING
        log.log(level, "weightvault: %d of %d checkpoint(s) backed up into %s%s", len(done), len(now), self.repo,
                "" if len(done) == len(now) else "; the rest stay queued (`weightvault queue list`)")
        self._check()
        return control
