"""The embedded default repository through the public API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from weightvault.api._repository import Repository
from weightvault.errors import RepositoryNotFoundError, UsageError, WeightvaultError
from weightvault.runner.defaults import default_key_file, default_repository_path, generate_key_file, read_password_file

__all__ = ["DefaultRepository", "open_or_create_default"]


@dataclass(frozen=True)
class DefaultRepository:
    repository: Repository
    created: bool
    key_file: Path | None  # the generated key file, when this call created it


def open_or_create_default(password: str | bytes | None, *, create: bool,
                           delta_max_depth: int | None = None) -> DefaultRepository:
    """Open the embedded default repository, creating it (and a key file, mode 0600) if asked.
    With no password, the generated key file is used; with one, it protects the new repository."""
    path, keyfile = default_repository_path(), default_key_file()
    if password is None and keyfile.exists():
        password = read_password_file(keyfile)
    if (path / "config").exists():
        if password is None:
            raise UsageError(f"the default repository at {path} needs a password and {keyfile} does not exist",
                             hint="set $WEIGHTVAULT_PASSWORD or use --password-file")
        return DefaultRepository(Repository.open(path, password), False, None)
    if not create:
        raise RepositoryNotFoundError(f"the default repository {path} does not exist yet",
                                      hint="run `weightvault init` or a first `weightvault backup PATH`")
    generated = None
    if password is None:
        password, generated = generate_key_file(keyfile), keyfile
    try:
        repo = Repository.init(path, password, delta_max_depth=delta_max_depth)
    except WeightvaultError:
        if generated is not None:
            generated.unlink()
        raise
    return DefaultRepository(repo, True, generated)
