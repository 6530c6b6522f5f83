"""Keys and locks of a repository: the part of ``Repository`` (``api._repository``) that manages
key files (one per password) and lock files."""

from __future__ import annotations

from weightvault.codec.crypto import KdfParams
from weightvault.errors import ImmutableError
from weightvault.repository import keys as _keys
from weightvault.repository import locks as _locks
from weightvault.repository.keys import KeyInfo
from weightvault.repository.locks import LockInfo
from weightvault.repository.repo import Repository as _Engine
from weightvault.runner.defaults import password_bytes

__all__ = ["KeysAndLocks"]


class KeysAndLocks:
    """Mixed into ``Repository``; needs ``_repo`` (the engine)."""

    _repo: _Engine

    def _mutable(self, what: str) -> None:
        if self._repo.config.append_only:
            raise ImmutableError(f"refusing to {what}: {self._repo.backend.location} is an append-only repository",
                                 hint="append-only repositories only ever grow; remove data from a repository"
                                 " created without --append-only")

    @property
    def current_key(self) -> str:
        return self._repo.key_name

    def list_keys(self) -> list[KeyInfo]:
        return _keys.list_keys(self._repo.backend)

    def add_key(self, password: str | bytes, *, kdf: KdfParams | None = None) -> str:
        repo = self._repo
        return _keys.create_key_file(repo.backend, repo.config.repo_id, repo.key, password_bytes(password),
                                     kdf or KdfParams())

    def remove_key(self, key_id: str) -> str:
        """Remove a key file by id prefix. The key in use and the last key cannot be removed."""
        self._mutable("remove a key")
        return _keys.remove_key_by_prefix(self._repo.backend, key_id, in_use=self._repo.key_name)

    def change_password(self, new_password: str | bytes, *, kdf: KdfParams | None = None) -> str:
        """Add a key for ``new_password``, then remove the current one. Returns the new key id."""
        self._mutable("change the password (it removes the old key)")
        old = self._repo.key_name
        name = self.add_key(new_password, kdf=kdf)
        self._repo.key_name = name
        _keys.remove_key_file(self._repo.backend, old)
        return name

    def locks(self) -> list[LockInfo]:
        return _locks.list_locks(self._repo.backend)

    def unlock(self, remove_all: bool = False) -> list[LockInfo]:
        return _locks.remove_stale_locks(self._repo.backend, remove_all)
