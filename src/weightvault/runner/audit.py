"""The ledger record of one operation (format v4, ``weightvault.repository.ledger``)."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from weightvault.errors import WeightvaultError
from weightvault.paths import atomic_write, cache_home
from weightvault.repository import ledger
from weightvault.repository.repo import Repository

__all__ = ["append", "operator", "query", "record", "remember_here", "truncated", "truncated_here", "verify"]

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
    """Append a record of ``op`` to the ledger when the block ends, also when it fails (then
    ``ok`` is False and ``detail`` says why: the error's message, "interrupted" for Ctrl-C or a
    signal, else the exception). The block may update the yielded dict (snapshots, bytes, detail,
    ok); ``dry_run=True`` records nothing."""
    rec: dict[str, Any] = {"op": op, "ok": True, "snapshots": [], "source": None, "target": None, "bytes": 0,
                           "detail": "", **fields}
    t0 = time.perf_counter()
    try:
        yield rec
    except WeightvaultError as exc:
        rec.update(ok=False, detail=exc.message)
        append(engine, rec, t0)
        raise
    except (KeyboardInterrupt, SystemExit) as exc:
        rec.update(ok=False, detail=f"interrupted ({type(exc).__name__}): nothing was committed after this point")
        append(engine, rec, t0)
        raise
    except Exception as exc:
        rec.update(ok=False, detail=f"failed: {type(exc).__name__}: {exc}"[:500])
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


def query(engine: Repository, since: str | None, op: str | None) -> list[dict[str, Any]]:
    """The ledger's records (oldest first) through the local SQLite catalog, synced first."""
    catalog = ledger.LedgerCatalog(ledger.catalog_path(engine.config.repo_id))
    try:
        catalog.sync(engine.backend, engine.key)
        return catalog.query(since, op)
    finally:
        catalog.close()


def verify(engine: Repository) -> ledger.LedgerCheck:
    """Check the chain (``ledger.verify_chain``); records this machine saw that are gone (a
    truncated tail) are reported too."""
    res = ledger.verify_chain(engine.backend, engine.key)
    res.problems += truncated(engine, res.records)
    return res


def truncated(engine: Repository, records: int) -> list[str]:
    """The problem, if the local catalog saw more than ``records`` records: the end of the
    ledger was removed (the chain alone cannot show that)."""
    try:
        catalog = ledger.LedgerCatalog(ledger.catalog_path(engine.config.repo_id))
        try:
            seen = catalog.last_seq()
        finally:
            catalog.close()
    except (sqlite3.Error, OSError) as exc:  # no catalog here (read-only cache): nothing to compare with
        _log.warning("could not read the ledger catalog: %s", exc)
        return []
    return _shorter(seen, records)


def _shorter(seen: int, records: int) -> list[str]:
    if seen >= records and seen >= 0:
        return [f"records up to {seen} were seen here before, the repository holds {records}: the end of the"
                f" ledger was removed, from record {records} (ledger/{records:016x}) on"]
    return []


def _seen_path(engine: Repository) -> Path:
    where = hashlib.sha256(engine.backend.location.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return cache_home() / "weightvault" / "ledger-seen" / f"{engine.config.repo_id}-{where}.json"


def truncated_here(engine: Repository, records: int) -> list[str]:
    """Like ``truncated``, against what ``check`` last saw at this very location (so a mirror of
    the repository elsewhere, which may lag, is compared with its own past only)."""
    try:
        seen = int(json.loads(_seen_path(engine).read_bytes())["records"]) - 1
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:
        _log.warning("could not read what check saw of the ledger before: %s", exc)
        return []
    return _shorter(seen, records)


def remember_here(engine: Repository, records: int) -> None:
    """Note that the ledger at this location held ``records`` records when it was checked."""
    doc = {"records": records, "location": engine.backend.location}
    try:
        path = _seen_path(engine)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(doc).encode("utf-8", "surrogateescape"), 0o600)
    except OSError as exc:
        _log.warning("could not note what check saw of the ledger: %s", exc)
