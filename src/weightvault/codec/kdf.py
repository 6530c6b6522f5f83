"""The memory-hard key-wrapping KDF (argon2id), and deriving a key ahead of need.

``derive_key`` is a pure function of (password, salt, params). ``prepare_key`` starts computing it
in a background thread (argon2 releases the GIL), so that a later ``derive_key`` with exactly the
same inputs takes that result instead of computing it again: the CLI starts it before its own
imports, and the two overlap (~0.2 s of a command's start-up). A prepared key is handed out once
and then forgotten; the inputs are remembered only as a SHA-256 digest, never as the password.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw

from weightvault.errors import IntegrityError

__all__ = ["KdfParams", "derive_key", "prepare_key", "prepared_count"]

_MAX_PREPARED = 4


@dataclass(frozen=True, slots=True)
class KdfParams:
    """argon2id parameters as stored in a key file. memory_kib is in KiB."""

    memory_kib: int = 65536
    time_cost: int = 3
    parallelism: int = 1

    def validate(self) -> None:
        if self.memory_kib < 8 * self.parallelism or self.time_cost < 1 or self.parallelism < 1:
            raise IntegrityError(f"key file has invalid KDF parameters {self}")
        if self.memory_kib > 4 * 1024 * 1024:
            raise IntegrityError(f"key file asks for {self.memory_kib} KiB of KDF memory (max 4 GiB)")


class _Pending:
    __slots__ = ("done", "key")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.key: bytes | None = None


_prepared: dict[bytes, _Pending] = {}
_lock = threading.Lock()


def _digest(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    h = hashlib.sha256(b"weightvault kdf inputs")
    for part in (password, salt, f"{params.memory_kib}:{params.time_cost}:{params.parallelism}".encode()):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _argon2(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    return bytes(
        hash_secret_raw(
            secret=password,
            salt=salt,
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            hash_len=32,
            type=Type.ID,
        )
    )


def derive_key(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """argon2id(password, salt) -> 32-byte wrapping key (IntegrityError for invalid ``params``).
    Takes a key prepared for exactly these inputs if there is one, waiting for it to finish."""
    params.validate()
    with _lock:
        pending = _prepared.pop(_digest(password, salt, params), None)
    if pending is not None:
        pending.done.wait()
        if pending.key is not None:
            return pending.key
    return _argon2(password, salt, params)  # none prepared, or its derivation failed: compute (and raise) here


def prepare_key(password: bytes, salt: bytes, params: KdfParams) -> bool:
    """Start ``derive_key(password, salt, params)`` in a daemon thread. Returns whether it started:
    not for invalid params, inputs already prepared, or when ``_MAX_PREPARED`` are waiting."""
    try:
        params.validate()
    except IntegrityError:
        return False  # the real open reports it
    digest = _digest(password, salt, params)
    with _lock:
        if digest in _prepared or len(_prepared) >= _MAX_PREPARED:
            return False
        pending = _prepared[digest] = _Pending()

    def work() -> None:
        try:
            pending.key = _argon2(password, salt, params)
        except Exception:  # derive_key computes again and raises it to its caller
            pending.key = None
        finally:
            pending.done.set()

    threading.Thread(target=work, name="weightvault-kdf", daemon=True).start()
    return True


def prepared_count() -> int:
    """How many prepared keys are waiting to be taken (for tests and diagnostics)."""
    with _lock:
        return len(_prepared)
