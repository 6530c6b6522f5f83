"""What one changed tensor costs in a PyTorch Distributed Checkpoint, against the same change in
safetensors (weightvault only; needs torch and safetensors: bench/requirements-finetune.txt).

A state of 10 F32 tensors of 1 MiB is saved twice, as a DCP checkpoint (``dcp.save``, one
``.distcp`` shard of concatenated torch zips plus ``.metadata``) and as one safetensors file; between
the two saves one tensor moves slightly (as one optimiser step would). Each is backed up into a
fresh repository after each save; the script prints the stored bytes of the first backup and what
the second added, as fractions of the checkpoint's raw size.

    .venv/bin/python bench/dcp_delta.py
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from weightvault.api import KdfParams, Repository

FAST = KdfParams(memory_kib=8192, time_cost=1, parallelism=1)


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file())


def run(kind: str, work: Path) -> tuple[int, int, int, int]:
    torch.manual_seed(0)
    state = {f"layer{i}.weight": torch.randn(512, 512) for i in range(10)}
    repo = Repository.init(work / kind / "repo", "bench", kdf=FAST)
    src = work / kind / "ckpt"
    out = []
    for step in range(2):
        if step:
            state["layer3.weight"] = state["layer3.weight"] + 1e-3 * torch.randn(512, 512)
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        if kind == "dcp":
            dcp.save(state, checkpoint_id=str(src))
        else:
            save_file(state, str(src / "model.safetensors"))
        res = repo.backup([src])
        out += [_size(src), int(res.snapshot.summary["stored_bytes_added"])]
    return out[0], out[1], out[2], out[3]


def main() -> None:
    warnings.simplefilter("ignore")  # dcp.save without a process group warns that it runs alone
    with tempfile.TemporaryDirectory() as tmp:
        print(f"{'format':12} {'raw':>10} {'first stored':>14} {'second added':>14}")
        for kind in ("dcp", "safetensors"):
            raw0, first, raw1, added = run(kind, Path(tmp))
            print(f"{kind:12} {raw0:>10} {first / raw0:>14.3f} {added / raw1:>13.1%}")
    os.sync()


if __name__ == "__main__":
    main()
