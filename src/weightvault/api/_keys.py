"""Keys and locks of a repository: the part of ``Repository`` (``api._repository``) that manages
key files (one per password) and lock files."""

from __future__ import annotations

import dataclasses
import os

from weightvault.backends.base import FileType
from weightvault.backends.factory import StorageOptions, open_backend
from weightvault.codec.crypto import KdfParams
from weightvault.errors import ImmutableError
from weightvault.format.layout import KMS_KEY_VERSION
from weightvault.kms import open_key_service
from weightvault.repository import keys as _keys
from weightvault.repository import locks as _locks
from weightvault.repository.keys import KeyInfo
from weightvault.repository.locks import LockInfo
from weightvault.repository.repo import Repository as _Engine
from weightvault.runner.defaults import password_bytes

__all__ = ["KeysAndLocks", "opens_without_password"]


def opens_without_password(location: str | os.PathLike[str], storage: StorageOptions | None = None) -> bool:
    """True if the repository at ``location`` has a KMS key file (it opens with ``password=None``)."""
    return any(k.kms for k in _keys.list_keys(open_backend(location, storage)))


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

    def add_kms_key(self, kms: str) -> tuple[str, int | None]:
        """Add a key file wrapped by the key service ``kms`` (``aws:KEY``); returns its id and, when
        the repository's format version had to be raised to 6 for it, the version it had. The
        config is rewritten before the key file is written: format-5 readers refuse it from then."""
        repo = self._repo
        service = open_key_service(kms)
        old: int | None = None
        if repo.config.version < KMS_KEY_VERSION:
            old, raised = repo.config.version, dataclasses.replace(repo.config, version=KMS_KEY_VERSION)
            repo.backend.save(FileType.CONFIG, "config", raised.to_bytes())
            repo.config = raised
        return _keys.create_kms_key_file(repo.backend, repo.config.repo_id, repo.key, service), old

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
