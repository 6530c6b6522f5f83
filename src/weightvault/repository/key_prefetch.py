"""Start deriving the wrapping keys of a local repository's password key files before the
repository is opened (``codec.kdf.prepare_key``). Light on imports: the CLI calls it before it loads
the rest of the package, so that argon2id runs beside those imports.

It only reads: ``<repository>/keys/<id>`` (docs/FORMAT.md section 3), regular files, in the order
``keys.unlock`` tries them. Whatever it cannot read or parse it skips; opening the repository
reports it.
"""

from __future__ import annotations

import binascii
import json
import os
from pathlib import Path

from weightvault.codec.kdf import KdfParams, prepare_key
from weightvault.errors import IntegrityError
from weightvault.format.objects import b64d
from weightvault.paths import read_small_regular

__all__ = ["kdf_inputs", "prefetch_local_keys"]

_MAX_KEY_FILE = 64 * 1024


def kdf_inputs(doc: dict[str, object], name: str) -> tuple[KdfParams, bytes]:
    """A password key file's argon2id parameters and salt (IntegrityError naming it if malformed)."""
    try:
        p = doc["kdf_params"]
        if not isinstance(p, dict):
            raise TypeError("kdf_params is not an object")
        params = KdfParams(int(p["memory_kib"]), int(p["time_cost"]), int(p["parallelism"]))
        salt = b64d(str(doc["salt"]))
    except (KeyError, ValueError, TypeError, binascii.Error) as exc:
        raise IntegrityError(f"key file {name} is malformed: {exc}") from exc
    return params, salt


def prefetch_local_keys(repo_dir: str | os.PathLike[str], password: bytes, limit: int = 2) -> int:
    """Start deriving the key of the first ``limit`` argon2id key files of the local repository
    at ``repo_dir`` for ``password``. Returns how many were started; never raises for the
    repository's contents."""
    keys = Path(repo_dir, "keys")
    try:
        names = sorted(n for n in os.listdir(keys) if not n.startswith("."))
    except OSError:
        return 0
    started = 0
    for name in names:
        if started >= limit:
            break
        raw = read_small_regular(keys / name, _MAX_KEY_FILE, follow_symlinks=False)
        try:
            doc = json.loads(raw.decode("utf-8")) if raw is not None else None
            if not isinstance(doc, dict) or doc.get("kdf") != "argon2id":
                continue
            params, salt = kdf_inputs(doc, name)
        except (ValueError, IntegrityError):
            continue
        started += prepare_key(password, salt, params)
    return started
