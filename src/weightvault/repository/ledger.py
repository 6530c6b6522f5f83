"""The ledger (format v4): a hash-chained record of every operation, kept in the repository.

``ledger/<seq as 16 hex digits>`` is a sealed document (kind LEDGER) written create-only::

    {"version": 1, "seq": n, "prev": hex | null, "time": ISO UTC, "operator": "user@host",
     "op": "backup" | "restore" | "verify" | "drill" | "copy" | "forget" | "prune" | "repair" |
           "repair-index",
     "ok": bool, "snapshots": [ids], "source": str | null, "target": str | null, "bytes": int,
     "duration_s": float, "detail": str, "repository": location}

``prev`` is the keyed BLAKE3 (the repository's id key) of the previous record's canonical JSON
(``null`` for record 0), so deleting, reordering or editing a record breaks the chain, and nobody
without the key can re-chain the rest. Writers take the next free sequence number with a
create-only save and retry on a collision, so concurrent clients append without forking the chain.
A local SQLite catalog caches the records for queries; the repository copy is authoritative.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightvault.backends.base import Backend, FileType
from weightvault.codec.crypto import MasterKey
from weightvault.errors import (
    IntegrityError,
    ObjectExistsError,
    ObjectNotFoundError,
    UnsupportedFormatError,
    WeightvaultError,
)
from weightvault.format import objects
from weightvault.format.layout import KIND_LEDGER
from weightvault.paths import cache_home
from weightvault.repository.index import open_document, seal_document

__all__ = ["LedgerCatalog", "LedgerCheck", "append_record", "catalog_path", "chain_hash", "load_records",
           "verify_chain"]

def _name(seq: int) -> str:
    return f"{seq:016x}"


def chain_hash(key: MasterKey, record: dict[str, Any]) -> str:
    return key.blob_id(objects.dumps(record)).hex()


def _load(backend: Backend, key: MasterKey, name: str) -> dict[str, Any]:
    what = f"ledger/{name}"
    doc = objects.loads(open_document(key, backend.load(FileType.LEDGER, name), KIND_LEDGER, what))
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise UnsupportedFormatError(f"{what} has an unknown version")
    if not isinstance(doc.get("seq"), int) or _name(doc["seq"]) != name:
        raise IntegrityError(f"{what} holds record {doc.get('seq')!r}: it was moved or renamed")
    return doc


def _names(backend: Backend) -> list[str]:
    return sorted(n for n, _ in backend.list(FileType.LEDGER))


def append_record(backend: Backend, key: MasterKey, fields: dict[str, Any]) -> dict[str, Any]:
    """Append one record after the current last one; returns it (with ``seq`` and ``prev``)."""
    for _attempt in range(64):
        names = _names(backend)
        last = names[-1] if names else None
        try:
            prev = _load(backend, key, last) if last else None
        except ObjectNotFoundError:
            continue
        seq = prev["seq"] + 1 if prev else 0
        record = {"version": 1, **fields, "seq": seq, "prev": chain_hash(key, prev) if prev else None}
        _, stored = seal_document(key, record, KIND_LEDGER)
        try:
            backend.save(FileType.LEDGER, _name(seq), stored, create_only=True)
            return record
        except ObjectExistsError:
            continue  # another client appended meanwhile: chain onto its record
    raise IntegrityError("could not append to the ledger after 64 attempts (too many concurrent writers?)")


def load_records(backend: Backend, key: MasterKey, after: int = -1) -> Iterator[dict[str, Any]]:
    for _, rec in _load_many(backend, key, [n for n in _names(backend) if int(n, 16) > after]):
        if isinstance(rec, WeightvaultError):
            raise rec
        yield rec


_READERS, _BATCH = 16, 256  # records fetched at once: one object each, so latency, not bytes, is the cost


def _load_many(backend: Backend, key: MasterKey, names: list[str]
               ) -> Iterator[tuple[str, dict[str, Any] | IntegrityError | UnsupportedFormatError]]:
    """``(name, record)`` in order, fetched ``_READERS`` at a time (over object storage one by one
    took minutes for a ledger of a few hundred records); a record that does not decrypt or is of
    an unknown version comes as its error, any other failure is raised."""
    def one(name: str) -> tuple[str, dict[str, Any] | IntegrityError | UnsupportedFormatError]:
        try:
            return name, _load(backend, key, name)
        except (IntegrityError, UnsupportedFormatError) as exc:
            return name, exc

    if len(names) <= 1:
        yield from map(one, names)
        return
    with ThreadPoolExecutor(max_workers=min(_READERS, len(names)), thread_name_prefix="wv-ledger") as pool:
        for i in range(0, len(names), _BATCH):
            yield from pool.map(one, names[i:i + _BATCH])


@dataclass
class LedgerCheck:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    read: list[dict[str, Any]] = field(default_factory=list)  # with ``verify_chain(keep=True)``

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(backend: Backend, key: MasterKey, keep: bool = False) -> LedgerCheck:
    """Every record decrypts; sequence numbers run 0, 1, 2, ... without gaps; every ``prev``
    equals the keyed hash of the record before it. ``keep``: the readable records are kept in
    ``res.read`` (for a caller that looks at them too, without reading them again)."""
    res = LedgerCheck()
    prev: dict[str, Any] | None = None
    expected = 0
    for name, rec in _load_many(backend, key, _names(backend)):
        if isinstance(rec, WeightvaultError):
            res.problems.append(f"record {name}: {rec.message}")
            prev, expected = None, int(name, 16) + 1
            continue
        seq = rec["seq"]
        if seq != expected:
            res.problems.append(f"records {expected}..{seq - 1} are missing (deleted?)")
        elif seq > 0 and prev is not None and rec.get("prev") != chain_hash(key, prev):
            res.problems.append(f"record {seq} does not chain onto record {seq - 1} (edited or replaced)")
        elif seq == 0 and rec.get("prev") is not None:
            res.problems.append("record 0 claims a predecessor")
        prev, expected = rec, seq + 1
        res.records += 1
        if keep:
            res.read.append(rec)
    return res


class LedgerCatalog:
    """A local SQLite cache of one repository's ledger, for fast queries."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, time TEXT, op TEXT, "
                        "ok INTEGER, doc TEXT)")

    def last_seq(self) -> int:
        row = self.db.execute("SELECT MAX(seq) FROM records").fetchone()
        return int(row[0]) if row and row[0] is not None else -1

    def sync(self, backend: Backend, key: MasterKey) -> int:
        """Add records newer than the cache's; returns how many."""
        n = 0
        for rec in load_records(backend, key, self.last_seq()):
            self.db.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
                            (rec["seq"], rec["time"], rec["op"], int(bool(rec["ok"])), json.dumps(rec)))
            n += 1
        self.db.commit()
        return n

    def query(self, since: str | None = None, op: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM records WHERE 1=1", []
        if since:
            sql += " AND time >= ?"
            args.append(since)
        if op:
            sql += " AND op = ?"
            args.append(op)
        return [json.loads(d) for (d,) in self.db.execute(sql + " ORDER BY seq", args)]

    def close(self) -> None:
        self.db.close()


def catalog_path(repo_id: str) -> Path:
    """``$XDG_CACHE_HOME/weightvault/ledger-<id>.sqlite``."""
    return cache_home() / f"ledger-{repo_id}.sqlite"
