"""Object names under a prefix, shared by the object-storage backends (S3, Azure, GCS): the
local layout's names (``config``, ``keys/<name>``, ``data/<XX>/<pack id>``, ...) below
``prefix``."""

from __future__ import annotations

from weightvault.backends.base import FileType
from weightvault.errors import BackendError

__all__ = ["PrefixedNames"]


class PrefixedNames:
    """Mixed into a backend that sets ``prefix`` (no leading or trailing ``/``; may be empty)."""

    prefix: str

    def _dir(self, ftype: FileType) -> str:
        return f"{self.prefix}/{ftype.value}/" if self.prefix else f"{ftype.value}/"

    def _key(self, ftype: FileType, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise BackendError(f"invalid object name {name!r}")
        if ftype is FileType.CONFIG:
            return f"{self.prefix}/config" if self.prefix else "config"
        if ftype is FileType.PACK:
            return f"{self._dir(ftype)}{name[:2]}/{name}"
        return self._dir(ftype) + name
