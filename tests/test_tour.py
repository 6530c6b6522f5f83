"""A newcomer's walk: the README's tour and the policy block of docs/POLICIES.md, run verbatim
(extracted from the documents, so they cannot drift) in bash on a fresh home directory. Every
command must succeed, and key output must be there."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def block(doc: Path, name: str) -> str:
    """The shell code between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    m = re.search(rf"<!-- {name}:start -->\s*```sh\n(.*?)```\s*<!-- {name}:end -->", text, re.S)
    assert m, f"{doc.name} has no {name} block"
    return m.group(1)


def test_the_readme_tour_and_the_policy_walk_run_as_printed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTVAULT_", "XDG_", "VIRTUAL_ENV"))}
    env.update(HOME=str(home), TMPDIR=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    tour, policy = block(ROOT / "README.md", "tour"), block(ROOT / "docs" / "POLICIES.md", "policy-tour")
    # bash -x names the failing command; the tour leaves its scratch directory as the cwd for the policy walk
    script = "set -euo pipefail\n" + tour + 'echo "== policy walk in $PWD"\n' + policy
    proc = subprocess.run(["bash", "-x", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900, check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    scratch = next(p for p in tmp_path.iterdir() if p.name.startswith("tmp"))
    assert (scratch / "restored" / "exp7" / "checkpoint-4000" / "model.safetensors").exists()
    assert not (scratch / "restored" / "exp7" / "cache.tmp").exists()  # excluded in every backup
    assert (scratch / "old" / "exp7" / "checkpoint-2000" / "model.safetensors").exists()
    assert "no problems found" in proc.stdout and "passed" in proc.stdout  # check, drill
    assert (home / ".config" / "weightvault" / "default-repo.key").exists()
    assert "ok" in proc.stdout.split("== policy walk")[1]
    assert (scratch / "exp7-as-of-now" / "exp7" / "checkpoint-4000" / "model.safetensors").exists()
    for step in ("backup", "restore", "drill", "repair-index"):
        assert re.search(rf"\b{step}\b", proc.stdout.split("weightvault ledger")[-1]), step
