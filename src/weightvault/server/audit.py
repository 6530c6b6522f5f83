"""The server's audit log: one JSON line per request, hash-chained, appended and fsynced.

``<state dir>/audit.jsonl``; each record holds ``seq`` (1, 2, ...), ``time`` (UTC, ISO 8601),
``user`` (None before authentication), ``addr``, ``repo``, ``op``, ``type``, ``name``, ``bytes``,
``status`` (the HTTP status), ``result`` (``ok``, ``refused``, ``error``), ``reason`` (why it was
refused or failed), ``prev`` (the previous record's ``hash``; 64 zeros for the first) and ``hash``:
the SHA-256 of the record's canonical JSON without ``hash`` (sorted keys, no spaces). Editing,
removing, inserting or reordering a record breaks the chain and ``verify`` names the first bad
line; cutting records off the end is detected only against a head hash kept elsewhere (``verify``
prints it: compare with an earlier one). Secrets never enter a record: no passwords, no tokens.

Appends take an exclusive ``flock`` on the file, so the server and ``serve break-glass`` (another
process) append to one chain; a record is durable (fsynced) before the request is answered.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["GENESIS", "AuditLog", "AuditProblem", "record_hash"]

GENESIS = "0" * 64
_TAIL = 64 * 1024  # a record is far shorter; the last one is found in the file's last 64 KiB


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class AuditProblem:
    line: int
    message: str


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._head: tuple[int, int, str] | None = None  # (file size, seq, hash) after our last append

    def append(self, **fields: Any) -> dict[str, Any]:
        """Append one record (``fields`` plus seq, time, prev, hash) durably and return it."""
        with self._lock:
            os.makedirs(self.path.parent, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                seq, prev = self._last(fd, size)
                rec: dict[str, Any] = {"seq": seq + 1, "time": datetime.now(UTC).isoformat(timespec="microseconds"),
                                       **fields, "prev": prev}
                rec["hash"] = record_hash(rec)
                line = (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode()
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                self._head = (size + len(line), rec["seq"], rec["hash"])
                return rec
            finally:
                os.close(fd)  # releases the flock

    def _last(self, fd: int, size: int) -> tuple[int, str]:
        if size == 0:
            return 0, GENESIS
        if self._head is not None and self._head[0] == size:
            return self._head[1], self._head[2]
        start = max(0, size - _TAIL)
        tail = os.pread(fd, size - start, start).rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            doc = json.loads(tail)
            return int(doc["seq"]), str(doc["hash"])
        except (ValueError, KeyError, TypeError):
            # a torn or edited last line: chain on from it anyway so appends never stop;
            # ``verify`` reports the damage
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: os.read(fd, 1 << 20), b""))
            return lines, hashlib.sha256(tail).hexdigest()

    def records(self) -> Iterator[dict[str, Any]]:
        """Every parseable record in order (``verify`` reports the rest)."""
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(doc, dict):
                    yield doc

    def verify(self) -> tuple[int, str, list[AuditProblem]]:
        """(records, head hash, problems): the chain checked from the first line to the last."""
        problems: list[AuditProblem] = []
        prev, seq, n = GENESIS, 0, 0
        try:
            f = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return 0, GENESIS, []
        with f:
            for lineno, raw in enumerate(f, 1):
                n += 1
                try:
                    doc = json.loads(raw)
                    if not isinstance(doc, dict):
                        raise ValueError("not an object")
                except ValueError as exc:
                    problems.append(AuditProblem(lineno, f"not a JSON record ({exc})"))
                    prev = hashlib.sha256(raw.rstrip(b"\n")).hexdigest()
                    continue
                if doc.get("seq") != seq + 1:
                    problems.append(AuditProblem(lineno, f"record number {doc.get('seq')!r} where {seq + 1} was due"
                                                 " (a record was removed, inserted or moved)"))
                if doc.get("prev") != prev:
                    problems.append(AuditProblem(lineno, "does not chain to the record before it"))
                if doc.get("hash") != record_hash(doc):
                    problems.append(AuditProblem(lineno, "its hash does not match its content (the record was"
                                                 " edited)"))
                seq = doc["seq"] if isinstance(doc.get("seq"), int) else seq + 1
                prev = str(doc.get("hash"))
        return n, prev, problems
