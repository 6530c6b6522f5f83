"""Key files: the master key wrapped under a password with argon2id, or (format v6) under a data
key of a key management service (AWS KMS).

``keys/<id>`` is plaintext JSON (see docs/FORMAT.md section 3)::

    {"version": 1, "kdf": "argon2id", "kdf_params": {...}, "salt": b64, "key": b64(envelope),
     "created": iso8601, "host": str, "user": str}
    {"version": 1, "kdf": "kms", "kms": "aws:KEY", "kms_key_id": ARN, "wrapped_key": b64,
     "key": b64(envelope), "created": ..., "host": ..., "user": ...}

The envelope's associated data binds it to the repository id, so a key file copied from another
repository is refused; a KMS wrapping is bound to it too (the encryption context). With a
password only password keys are tried; without one, only KMS keys.
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
from weightvault.errors import IntegrityError, KeyServiceError, UnsupportedFormatError, UsageError, WrongPasswordError
from weightvault.format import objects
from weightvault.format.layout import KIND_KEY, kind_aad
from weightvault.kms import KeyService, open_key_service
from weightvault.repository.key_prefetch import kdf_inputs

__all__ = ["KeyInfo", "KeyService", "create_initial_keys", "create_key_file", "create_kms_key_file", "kms_context",
           "list_keys", "unlock"]

_KDFS = ("argon2id", "kms")


@dataclass(frozen=True, slots=True)
class KeyInfo:
    name: str
    created: str
    host: str
    user: str
    kms: str = ""  # a KMS key's service spec ("aws:..."); "" for a password key


def kms_context(repo_id: str) -> dict[str, str]:
    """The encryption context a KMS wrapping of this repository's key is bound to."""
    return {"weightvault-repository": repo_id}


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def _secret(master: MasterKey) -> bytes:
    return objects.dumps({"enc_key": objects.b64e(master.enc_key), "id_key": objects.b64e(master.id_key),
                          "chunker_seed": master.chunker_seed})


def _master(secret: bytes) -> MasterKey:
    s = objects.loads(secret)
    return MasterKey(objects.b64d(s["enc_key"]), objects.b64d(s["id_key"]), int(s["chunker_seed"]))


def _store(backend: Backend, doc: dict[str, object]) -> str:
    doc.update(created=datetime.now(UTC).isoformat(), host=socket.gethostname(), user=_current_user())
    raw = objects.dumps(doc)
    name = blake3.blake3(raw).hexdigest()
    backend.save(FileType.KEY, name, raw, create_only=True)
    return name


def create_key_file(backend: Backend, repo_id: str, master: MasterKey, password: bytes, kdf: KdfParams) -> str:
    """Wrap ``master`` under ``password`` and store it; returns the key file's name."""
    salt = os.urandom(16)
    wrap = derive_key(password, salt, kdf)
    return _store(backend, {
        "version": 1,
        "kdf": "argon2id",
        "kdf_params": {"memory_kib": kdf.memory_kib, "time_cost": kdf.time_cost, "parallelism": kdf.parallelism},
        "salt": objects.b64e(salt),
        "key": objects.b64e(seal_envelope(wrap, _secret(master), kind_aad(KIND_KEY, repo_id.encode()))),
    })


def create_kms_key_file(backend: Backend, repo_id: str, master: MasterKey, service: KeyService) -> str:
    """Wrap ``master`` under a fresh data key of ``service``; only the wrapped data key is stored.
    The caller made sure the repository's config version is at least ``KMS_KEY_VERSION``."""
    plain, wrapped, key_id = service.generate(kms_context(repo_id))
    envelope = seal_envelope(plain, _secret(master), kind_aad(KIND_KEY, repo_id.encode()))
    return _store(backend, {"version": 1, "kdf": "kms", "kms": service.spec, "kms_key_id": key_id,
                            "wrapped_key": objects.b64e(wrapped), "key": objects.b64e(envelope)})


def create_initial_keys(backend: Backend, repo_id: str, master: MasterKey, password: bytes | None, kdf: KdfParams,
                        kms: KeyService | None) -> str:
    """``init``'s key files: one wrapped by ``kms``, one for ``password`` (each if given; at least
    one is). Returns the name of the last one written."""
    if password is None and kms is None:
        raise UsageError("a new repository needs a password or a KMS key")
    name = "" if kms is None else create_kms_key_file(backend, repo_id, master, kms)
    return name if password is None else create_key_file(backend, repo_id, master, password, kdf)


def _parse(raw: bytes, name: str) -> dict[str, object]:
    try:
        doc = objects.loads(raw)
    except ValueError as exc:
        raise IntegrityError(f"key file {name} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("kdf") not in _KDFS or doc.get("version") != 1:
        raise UnsupportedFormatError(f"key file {name} has an unknown version or KDF")
    return doc


def list_keys(backend: Backend) -> list[KeyInfo]:
    out = []
    for name, _ in backend.list(FileType.KEY):
        doc = _parse(backend.load(FileType.KEY, name), name)
        out.append(KeyInfo(name, str(doc.get("created", "")), str(doc.get("host", "")), str(doc.get("user", "")),
                           str(doc.get("kms", "")) if doc.get("kdf") == "kms" else ""))
    return sorted(out, key=lambda k: k.created)


def _try_key(doc: dict[str, object], name: str, repo_id: str, password: bytes) -> MasterKey | None:
    params, salt = kdf_inputs(doc, name)
    try:
        envelope = objects.b64d(str(doc["key"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise IntegrityError(f"key file {name} is malformed: {exc}") from exc
    wrap = derive_key(password, salt, params)
    try:
        secret = open_envelope(wrap, envelope, kind_aad(KIND_KEY, repo_id.encode()), f"key {name}")
    except IntegrityError:
        return None
    return _master(secret)


def _try_kms(doc: dict[str, object], name: str, repo_id: str) -> MasterKey:
    try:
        spec, key_id = str(doc["kms"]), str(doc["kms_key_id"])
        wrapped, envelope = objects.b64d(str(doc["wrapped_key"])), objects.b64d(str(doc["key"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise IntegrityError(f"key file {name} is malformed: {exc}") from exc
    plain = open_key_service(spec).decrypt(wrapped, key_id, kms_context(repo_id))
    return _master(open_envelope(plain, envelope, kind_aad(KIND_KEY, repo_id.encode()), f"key {name}"))


def unlock(backend: Backend, repo_id: str, password: bytes | None) -> tuple[MasterKey, str]:
    """Open the master key: with ``password``, from the password key files; with None, from the
    KMS key files. Returns it and the name of the key file that opened it."""
    names = [n for n, _ in backend.list(FileType.KEY)]
    if not names:
        raise IntegrityError(f"repository at {backend.location} has no key files", hint="restore keys/ from a copy")
    docs = [(name, _parse(backend.load(FileType.KEY, name), name)) for name in sorted(names)]
    if password is None:
        return _unlock_kms(backend, repo_id, docs)
    tried = 0
    for name, doc in docs:
        if doc["kdf"] == "argon2id":
            tried += 1
            master = _try_key(doc, name, repo_id, password)
            if master is not None:
                return master, name
    also = "; it also opens with its KMS key when no password is given" if tried < len(docs) else ""
    raise WrongPasswordError(f"wrong password for repository {backend.location} (tried {tried} key file(s))",
                             hint="check $WEIGHTVAULT_PASSWORD or --password-file" + also)


def _unlock_kms(backend: Backend, repo_id: str, docs: list[tuple[str, dict[str, object]]]) -> tuple[MasterKey, str]:
    kms = [(name, doc) for name, doc in docs if doc["kdf"] == "kms"]
    if not kms:
        raise WrongPasswordError(f"no password given, and repository {backend.location} has no KMS key",
                                 hint="set $WEIGHTVAULT_PASSWORD or $WEIGHTVAULT_PASSWORD_FILE, or use --password-file")
    first: KeyServiceError | IntegrityError | None = None
    for name, doc in kms:
        try:
            return _try_kms(doc, name, repo_id), name
        except (KeyServiceError, IntegrityError) as exc:  # another KMS key may still open it
            first = first or exc
    assert first is not None
    raise first


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
