"""Memory stays bounded whatever the file size: a 1 GiB file is backed up and restored by a child
process whose peak RSS (``VmHWM``) must stay far below the file size."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import FAST_KDF, PASSWORD

LIMIT_MIB = 512


def test_backup_and_restore_of_1gib_file_stay_under_memory_bound(tmp_path: Path) -> None:
    src = tmp_path / "run"
    src.mkdir()
    big = src / "weights.bin"
    block = os.urandom(8 << 20)
    with open(big, "wb") as f:  # 1 GiB of incompressible, non-repeating-at-chunk-scale data
        for i in range(128):
            f.write(block[i:] + block[:i])
    script = textwrap.dedent(
        f"""
        import sys
        from weightvault.api import KdfParams, Repository
        repo = Repository.init({str(tmp_path / "repo")!r}, {PASSWORD!r},
                               kdf=KdfParams({FAST_KDF.memory_kib}, {FAST_KDF.time_cost}, {FAST_KDF.parallelism}))
        res = repo.backup([{str(src)!r}])
        assert not res.errors, res.errors
        out = repo.restore("latest", {str(tmp_path / "out")!r}, verify=True)
        assert out.bytes == {1 << 30}, out
        # VmHWM: this process's own peak RSS. (ru_maxrss would also count the pytest process the
        # child was forked from, which Linux carries over exec: with torch loaded, far above ours.)
        hwm = next(ln for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
        print(int(hwm.split()[1]) // 1024)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_mib = int(proc.stdout.strip().splitlines()[-1])
    assert peak_mib < LIMIT_MIB, f"peak RSS {peak_mib} MiB for a 1 GiB file"
    assert (tmp_path / "out" / "run" / "weights.bin").stat().st_size == 1 << 30
