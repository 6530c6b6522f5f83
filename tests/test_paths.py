"""paths.py: every XDG base directory is honoured when absolute, ignored when empty or relative."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from weightvault import api, paths


@pytest.mark.parametrize(("var", "fn", "default"), [
    ("XDG_DATA_HOME", paths.data_home, ".local/share"),
    ("XDG_CONFIG_HOME", paths.config_home, ".config"),
    ("XDG_STATE_HOME", paths.state_home, ".local/state"),
    ("XDG_CACHE_HOME", paths.cache_home, ".cache"),
])
def test_each_base_directory(var: str, fn: object, default: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert callable(fn)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(var, str(tmp_path / "xdg"))
    assert fn() == tmp_path / "xdg" / "weightvault"
    for ignored in ("", "relative/dir"):
        monkeypatch.setenv(var, ignored)
        assert fn() == tmp_path / "home" / default / "weightvault"


def test_the_defaults_follow_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "d"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "c"))
    assert api.default_repository_path() == tmp_path / "d" / "weightvault" / "repo"
    assert api.default_key_file() == tmp_path / "c" / "weightvault" / "default-repo.key"
    assert api.default_policy_file() == tmp_path / "c" / "weightvault" / "policy.toml"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    legacy = tmp_path / "home" / ".config" / "weightvault" / "policy.toml"
    legacy.parent.mkdir(parents=True)
    legacy.write_text("")
    assert api.default_policy_file() == legacy  # where earlier versions looked, while the new one is absent
    (tmp_path / "c" / "weightvault").mkdir(parents=True)
    (tmp_path / "c" / "weightvault" / "policy.toml").write_text("")
    assert api.default_policy_file() == tmp_path / "c" / "weightvault" / "policy.toml"


def test_the_cli_reads_the_policy_file_under_xdg_config_home(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    (config / "weightvault").mkdir(parents=True)
    (config / "weightvault" / "policy.toml").write_text("[settings]\nbogus_key = 1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEIGHTVAULT_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(config))
    proc = subprocess.run([sys.executable, "-m", "weightvault", "policy", "check"], env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 7, proc.stderr  # it found and read that file: a ConfigFileError naming it
    assert str(config / "weightvault" / "policy.toml") in proc.stderr
