"""The embedded default repository's place and its generated key file."""

from __future__ import annotations

import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

from weightvault.errors import ConfigFileError, UsageError
from weightvault.paths import config_home, data_home

__all__ = [
    "default_key_file",
    "default_policy_file",
    "default_repository_path",
    "generate_key_file",
    "read_password_file",
    "read_toml_file",
]


def default_repository_path() -> Path:
    """The embedded default repository: ``$XDG_DATA_HOME/weightvault/repo`` (~/.local/share/...)."""
    return data_home() / "repo"


def default_key_file() -> Path:
    """Generated password of the default repository: ``$XDG_CONFIG_HOME/weightvault/default-repo.key``."""
    return config_home() / "default-repo.key"


def default_policy_file() -> Path:
    """The policy file used without ``--policy``: ``$XDG_CONFIG_HOME/weightvault/policy.toml``, or
    ``~/.config/weightvault/policy.toml`` when only that exists (where earlier versions looked)."""
    path = config_home() / "policy.toml"
    legacy = Path(os.path.expanduser("~"), ".config", "weightvault", "policy.toml")
    return legacy if not path.exists() and legacy.exists() else path


def password_bytes(password: str | bytes) -> bytes:
    if isinstance(password, str):
        password = password.encode("utf-8")
    if not password:
        raise UsageError("the password is empty", hint="set $WEIGHTVAULT_PASSWORD or use --password-file")
    return password


def read_password_file(path: str | os.PathLike[str]) -> bytes:
    """The first line of a password file, without its line ending."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from exc
    return password_bytes(data.splitlines()[0] if data else b"")


def generate_key_file(path: Path) -> str:
    """Write a new random password to ``path`` (mode 0600, created exclusively, fsynced, and the
    directory too) and return it."""
    password = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, password.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return password


def read_toml_file(path: Path, what: str, hint: str) -> dict[str, Any]:
    """The TOML document at ``path`` (a configuration file: ``what`` names it in messages);
    ConfigFileError (exit 7) if it is missing (with ``hint``), unreadable or not valid TOML."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"no {what} at {path}", hint=hint) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read {path}: {exc}") from None
