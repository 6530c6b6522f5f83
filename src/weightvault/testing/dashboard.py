"""A real ``weightvault ui`` process on 127.0.0.1 for tests, and the world it shows.

    with dashboard(["ui", "--policy", str(policy)], env, tmp_path) as ui:  # the command line after "weightvault"
        page = ui.session().request("GET", ui.base + "/runs")   # a client holding the session cookie

``make_training_run`` trains a tiny two-layer model with torch for a few steps, only its second
layer unfrozen (as a fine-tune of a pretrained model would), and writes each checkpoint as a
Hugging Face Trainer does (``model.safetensors``, ``optimizer.pt``, ``trainer_state.json``); each
is backed up as it appears with the tags the integrations use (``run``, ``step``, ``loss``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3

from weightvault.testing.repo_server import stop

__all__ = ["Dashboard", "dashboard", "make_training_run"]


@dataclass
class Dashboard:
    url: str  # with the one-time token
    base: str
    process: subprocess.Popen[str]
    log: Path

    def session(self) -> urllib3.PoolManager:
        """A client that followed the start link (the token is spent) and keeps the cookie."""
        pool = urllib3.PoolManager(retries=False)
        r = pool.request("GET", self.url, redirect=False)
        assert r.status == 303, (r.status, r.data[:300])
        cookie = r.headers["set-cookie"].split(";", 1)[0]
        pool.headers = {"cookie": cookie}
        return pool


@contextlib.contextmanager
def dashboard(args: Sequence[str], env: Mapping[str, str], where: Path) -> Iterator[Dashboard]:
    """``python -m weightvault ARGS`` (ARGS includes ``ui``), its log in ``where``/ui.log."""
    log_path = where / "ui.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed below; a pipe nobody reads could fill up
    proc = subprocess.Popen([sys.executable, "-m", "weightvault", *args], stdout=subprocess.PIPE, stderr=log,
                            text=True, env=dict(env))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the socket listens
        if not line.startswith("dashboard at "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"weightvault ui did not start: {line}{log_path.read_text()}")
        url = line.split()[-1]
        yield Dashboard(url, url.split("/?token=", 1)[0], proc, log_path)
    finally:
        stop(proc, log)


def make_training_run(run_dir: Path, repo: Any, *, steps: int = 5, every: int = 2, name: str = "tiny") -> list[Any]:
    """Train, checkpoint every ``every`` steps and back each checkpoint up into ``repo`` (an
    ``api.Repository``); the snapshots, in order. Needs torch and safetensors."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))
    for p in model[0].parameters():
        p.requires_grad_(False)  # "pretrained": only the head is fine-tuned
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(64, 256), torch.randn(64, 256)
    snaps, history = [], []
    for step in range(1, steps * every + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        history.append({"step": step, "loss": round(loss.item(), 6)})
        if step % every:
            continue
        ckpt = run_dir / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
        torch.save(opt.state_dict(), ckpt / "optimizer.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
        tags = [f"run={name}", f"step={step}", f"loss={loss.item():.6g}"]
        snaps.append(repo.backup([ckpt], tags=tags).snapshot)
    return snaps
