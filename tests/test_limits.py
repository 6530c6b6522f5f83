"""Trees that stress process limits: thousands of directories under a low open-file limit, and a
directory chain deeper than Python's recursion limit. Backup and restore must both complete."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import FAST_KDF, PASSWORD


def test_many_directories_and_deep_chain_under_low_fd_limit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, resource, sys
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        sys.setrecursionlimit(400)
        from weightvault.api import KdfParams, Repository
        base = {str(tmp_path)!r}
        src = os.path.join(base, "src")
        for i in range(600):
            os.makedirs(os.path.join(src, f"d{{i:03d}}"))
            with open(os.path.join(src, f"d{{i:03d}}", "f"), "w") as f:
                f.write(str(i))
        fd = os.open(src, os.O_RDONLY)
        for _ in range(600):  # deeper than the recursion limit set above (pytest must still rmtree it)
            os.mkdir("x", dir_fd=fd)
            nfd = os.open("x", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("deep")
        os.close(fd)
        repo = Repository.init(os.path.join(base, "repo"), {PASSWORD!r},
                               kdf=KdfParams({FAST_KDF.memory_kib}, {FAST_KDF.time_cost}, {FAST_KDF.parallelism}))
        res = repo.backup([src])
        assert not res.errors, res.errors
        assert res.snapshot.summary["files"] == 601 and res.snapshot.summary["dirs"] == 1201
        out = repo.restore("latest", os.path.join(base, "out"), verify=True)
        assert (out.files, out.dirs, out.verified) == (601, 1201, 601), out
        assert repo.check(read_data=True).ok
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    deep = tmp_path / "out" / "src" / Path(*["x"] * 600) / "deep.txt"
    assert deep.read_text() == "deep"
