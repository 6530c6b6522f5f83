"""Key files: the master key wrapped under a password with argon2id.

``keys/<id>`` is plaintext JSON (see docs/FORMAT.md)::

    {"version": 1, "kdf": "argon2id", "kdf_params": {...}, "salt": b64, "key": b64(envelope),
     "created": iso8601, "host": str, "user": str}

The envelope's associated data binds it to the repository id, so a key file copied from another
repository is refused.
"""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import blake3

from weightvault.backends.base import Backend, FileType
from weightvault.codec.crypto import KdfParams, MasterKey, derive_key, open_envelope, seal_envelope
from weightvault.errors import IntegrityError, UnsupportedFormatError, UsageError, WrongPasswordError
from weightvault.format import objects
from weightvault.format.layout import KIND_KEY, kind_aad

__all__ = ["KeyInfo", "create_key_file", "list_keys", "unlock"]


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    created: str
    host: str
    user: str


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def create_key_file(backend: Backend, repo_id: str, master: MasterKey, password: bytes, kdf: KdfParams) -> str:
    """Wrap ``master`` under ``password`` and store it; returns the key file's name."""
    salt = os.urandom(16)
    wrap = derive_key(password, salt, kdf)
    secret = objects.dumps(
        {
            "enc_key": objects.b64e(master.enc_key),
            "id_key": objects.b64e(master.id_key),
            "chunker_seed": master.chunker_seed,
        }
    )
    doc = {
        "version": 1,
        "kdf": "argon2id",
        "kdf_params": {"memory_kib": kdf.memory_kib, "time_cost": kdf.time_cost, "parallelism": kdf.parallelism},
        "salt": objects.b64e(salt),
        "key": objects.b64e(seal_envelope(wrap, secret, kind_aad(KIND_KEY, repo_id.encode()))),
        "created": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "user": _current_user(),
    }
    raw = objects.dumps(doc)
    name = blake3.blake3(raw).hexdigest()
    backend.save(FileType.KEY, name, raw, create_only=True)
    return name


def _parse(raw: bytes, name: str) -> dict[str, object]:
    try:
        doc = objects.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"key file {name} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("kdf") != "argon2id" or doc.get("version") != 1:
        raise UnsupportedFormatError(f"key file {name} has an unknown version or KDF")
    return doc


def list_keys(backend: Backend) -> list[KeyInfo]:
    out = []
    for name, _ in backend.list(FileType.KEY):
        doc = _parse(backend.load(FileType.KEY, name), name)
        out.append(KeyInfo(name, str(doc.get("created", "")), str(doc.get("host", "")), str(doc.get("user", ""))))
    return sorted(out, key=lambda k: k.created)


def _try_key(doc: dict[str, object], name: str, repo_id: str, password: bytes) -> MasterKey | None:
    try:
        p = doc["kdf_params"]
        assert isinstance(p, dict)
        params = KdfParams(int(p["memory_kib"]), int(p["time_cost"]), int(p["parallelism"]))
        salt = objects.b64d(str(doc["salt"]))
        envelope = objects.b64d(str(doc["key"]))
    except (KeyError, ValueError, AssertionError, TypeError) as exc:
        raise IntegrityError(f"key file {name} is malformed: {exc}") from exc
    wrap = derive_key(password, salt, params)
    try:
        secret = open_envelope(wrap, envelope, kind_aad(KIND_KEY, repo_id.encode()), f"key {name}")
    except IntegrityError:
        return None
    s = objects.loads(secret)
    return MasterKey(objects.b64d(s["enc_key"]), objects.b64d(s["id_key"]), int(s["chunker_seed"]))


def unlock(backend: Backend, repo_id: str, password: bytes) -> tuple[MasterKey, str]:
    """Try every key file; return the master key and the name of the key that opened it."""
    names = [n for n, _ in backend.list(FileType.KEY)]
    if not names:
        raise IntegrityError(f"repository at {backend.location} has no key files", hint="restore keys/ from a copy")
    for name in sorted(names):
        doc = _parse(backend.load(FileType.KEY, name), name)
        master = _try_key(doc, name, repo_id, password)
        if master is not None:
            return master, name
    raise WrongPasswordError(
        f"wrong password for repository {backend.location} (tried {len(names)} key file(s))",
        hint="check $WEIGHTVAULT_PASSWORD or --password-file",
    )


def remove_key_by_prefix(backend: Backend, prefix: str, *, in_use: str) -> str:
    """Remove the one key file whose name starts with ``prefix``, never ``in_use`` (UsageError);
    returns its name."""
    matches = [k.name for k in list_keys(backend) if k.name.startswith(prefix)]
    if len(matches) != 1:
        raise UsageError(f"key id {prefix!r} matches {len(matches)} keys; give a unique prefix")
    if matches[0] == in_use:
        raise UsageError("refusing to remove the key this session is using", hint="open with another key first")
    remove_key_file(backend, matches[0])
    return matches[0]


def remove_key_file(backend: Backend, name: str) -> None:
    """Remove one key file (the caller made sure another key remains)."""
    backend.remove(FileType.KEY, name)
