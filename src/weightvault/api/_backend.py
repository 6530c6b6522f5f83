"""Opening a repository on storage the caller made: ``open_repository_on``."""

from __future__ import annotations

from weightvault.api._repository import Repository
from weightvault.backends.base import Backend
from weightvault.repository.repo import Repository as _Engine
from weightvault.runner.defaults import password_bytes

__all__ = ["open_repository_on"]


def open_repository_on(backend: Backend, password: str | bytes, *, io_threads: int = 0) -> Repository:
    """The repository that ``backend`` stores, opened with ``password`` (WrongPasswordError if it
    unlocks no key). For storage wrapped by the caller: the repository server's dashboard opens
    each user's repositories through a backend that applies that user's role to every call.
    ``io_threads``: reader threads for restores (0: one per CPU)."""
    engine = _Engine.open(backend, password_bytes(password))
    engine.io_threads = io_threads
    return Repository(engine)
