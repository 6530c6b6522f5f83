"""The ledger record of one operation (format v4, ``weightvault.repository.ledger``)."""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from weightvault.errors import WeightvaultError
from weightvault.repository import ledger
from weightvault.repository.repo import Repository

__all__ = ["append", "operator", "record"]

_log = logging.getLogger(__name__)


def operator() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@contextlib.contextmanager
def record(engine: Repository, op: str, **fields: Any) -> Iterator[dict[str, Any]]:
    """Append a record of ``op`` to the ledger when the block ends, also when it fails with a
    WeightvaultError (then ``ok`` is False and ``detail`` the message). The block may update the
    yielded dict (snapshots, bytes, detail, ok); ``dry_run=True`` records nothing."""
    rec: dict[str, Any] = {"op": op, "ok": True, "snapshots": [], "source": None, "target": None, "bytes": 0,
                           "detail": "", **fields}
    t0 = time.perf_counter()
    try:
        yield rec
    except WeightvaultError as exc:
        rec.update(ok=False, detail=exc.message)
        append(engine, rec, t0)
        raise
    append(engine, rec, t0)


def append(engine: Repository, rec: dict[str, Any], t0: float) -> None:
    """Append ``rec`` (started at ``perf_counter()`` ``t0``). A failed append is logged, never
    fails the operation; repositories before format v4 have no ledger."""
    if engine.config.version < 4 or rec.pop("dry_run", False):
        return
    fields = {**rec, "time": datetime.now(UTC).isoformat(), "operator": operator(),
              "duration_s": round(time.perf_counter() - t0, 3), "repository": engine.backend.location}
    for k in ("source", "target", "detail"):  # paths may hold bytes that are not UTF-8
        if isinstance(fields.get(k), str):
            fields[k] = fields[k].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    try:
        ledger.append_record(engine.backend, engine.key, fields)
    except WeightvaultError as exc:
        _log.warning("could not append to the ledger of %s: %s", engine.backend.location, exc.message)
