"""The shipped systemd units: every ExecStart is a weightvault command line the CLI accepts, and
``systemd-analyze verify`` (where installed) finds nothing wrong with them."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"


def _exec_starts() -> list[list[str]]:
    out = []
    for unit in sorted(UNITS.glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                out.append(shlex.split(line.removeprefix("ExecStart=")))
    return out


def test_every_exec_start_is_a_command_line_the_cli_accepts() -> None:
    starts = _exec_starts()
    assert len(starts) == 2
    for argv in starts:
        assert argv[0] == "/usr/local/bin/weightvault"
        res = subprocess.run([sys.executable, "-m", "weightvault", *argv[1:], "--help"], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, (argv, res.stderr)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    for unit in UNITS.iterdir():
        text = unit.read_text().replace("/usr/local/bin/weightvault", str(Path(sys.executable).parent / "weightvault"))
        (tmp_path / unit.name).write_text(text.replace("User=ml", "User=root").replace("Group=ml", "Group=root"))
    res = subprocess.run(["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.iterdir())],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stderr.strip(), res.stderr
