"""Before the CLI's imports (~0.2 s): guess the local repository and the password this command
will use, and start deriving its key (``repository.key_prefetch``), so that argon2id (~0.2 s,
outside the GIL) runs beside the imports instead of after them.

Only a guess, and safe when wrong: it reads nothing but regular files (never a FIFO or
``/dev/stdin`` a password may be piped through), writes nothing, and ``derive_key`` takes a
prepared key only for exactly the inputs it is asked for. The sources are the CLI's own, in its
order (``cli/common.py``): ``-r``/``--repo`` or ``$WEIGHTVAULT_REPO`` (local paths only), else the
embedded default repository; ``--password-file``, ``$WEIGHTVAULT_PASSWORD``,
``$WEIGHTVAULT_PASSWORD_FILE``, and for the default repository its generated key file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["guess", "start"]

_NO_REPOSITORY = {"-h", "--help", "--version", "init"}


def _option(argv: Sequence[str], names: tuple[str, ...]) -> str | None:
    """The value of the first of ``names`` in ``argv`` (``-r X``, ``--repo X``, ``--repo=X``)."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return None
        if arg in names and i + 1 < len(argv):
            return argv[i + 1]
        for name in names:
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def _first_line(path: str | os.PathLike[str]) -> bytes | None:
    """The first line of a regular file (as ``read_password_file`` reads it), else None."""
    from weightvault.paths import read_small_regular

    lines = (read_small_regular(path, 64 * 1024) or b"").splitlines()
    return lines[0] if lines else None


def _password(argv: Sequence[str], env: Mapping[str, str], default_key: Path | None) -> bytes | None:
    path = _option(argv, ("--password-file",))
    if path:
        return _first_line(path)
    if env.get("WEIGHTVAULT_PASSWORD") is not None:
        return os.fsencode(env["WEIGHTVAULT_PASSWORD"]) or None
    if env.get("WEIGHTVAULT_PASSWORD_FILE"):
        return _first_line(env["WEIGHTVAULT_PASSWORD_FILE"])
    return _first_line(default_key) if default_key is not None else None


def guess(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Path, bytes] | None:
    """The local repository directory and password the command would open, or None."""
    if any(a in _NO_REPOSITORY for a in argv[:8]):
        return None
    repo = _option(argv, ("-r", "--repo")) or env.get("WEIGHTVAULT_REPO") or None
    default_key = None
    if repo is None:
        from weightvault.paths import config_home, data_home

        repo, default_key = str(data_home() / "repo"), config_home() / "default-repo.key"
    if "://" in repo:
        return None
    password = _password(argv, env, default_key)
    return (Path(repo), password) if password else None


def start(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Start deriving the guessed repository's keys in the background; returns how many started.
    Never raises: this is only a head start for the real open, which reports every problem."""
    try:
        found = guess(argv, env)
        if found is None:
            return 0
        from weightvault.repository.key_prefetch import prefetch_local_keys

        return prefetch_local_keys(found[0], found[1])
    except Exception:  # a failed guess must never change what the command does
        return 0
