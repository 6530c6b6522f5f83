"""``WrapperBackend``: forwards every member of the Backend protocol to ``inner``.

Cross-cutting concerns (retries, limits, counting, fault injection) subclass it and override only
what they change, so a capability added to the protocol is forwarded by every wrapper at once
(zarr's ``WrapperStore``). A wrapper never probes ``inner`` for optional members: the protocol
declares them all.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from weightvault.backends.base import Backend, FileType

__all__ = ["WrapperBackend"]


class WrapperBackend:
    """Delegates everything to ``inner`` unchanged."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def supports_retention(self) -> bool:
        return self.inner.supports_retention

    @property
    def supports_cold(self) -> bool:
        return self.inner.supports_cold

    def thaw(self, ftype: FileType, name: str, days: int, tier: str) -> str:
        return self.inner.thaw(ftype, name, days, tier)

    def create(self) -> None:
        self.inner.create()

    def save(self, ftype: FileType, name: str, data: bytes, *, create_only: bool = False) -> None:
        self.inner.save(ftype, name, data, create_only=create_only)

    def load(self, ftype: FileType, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.load(ftype, name, offset, length)

    def stat(self, ftype: FileType, name: str) -> int:
        return self.inner.stat(ftype, name)

    def list(self, ftype: FileType) -> Iterator[tuple[str, int]]:
        return self.inner.list(ftype)

    def remove(self, ftype: FileType, name: str) -> None:
        self.inner.remove(ftype, name)

    def retain(self, ftype: FileType, name: str, until: datetime) -> None:
        self.inner.retain(ftype, name, until)

    def remove_temp(self, min_age: float) -> int:
        return self.inner.remove_temp(min_age)

    def free_space(self) -> int | None:
        return self.inner.free_space()

    def total_space(self) -> int | None:
        return self.inner.total_space()
