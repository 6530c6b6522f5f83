"""The repository's ledger (format v4, ``weightvault.repository.ledger``): the part of
``Repository`` (``api._repository``) that reads and checks it and lets a caller outside the
engine (the failover controller) append its own records to it."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any

from weightvault.errors import UsageError
from weightvault.repository.ledger import LedgerCheck
from weightvault.repository.repo import Repository as _Engine
from weightvault.runner import audit as _audit

__all__ = ["ENGINE_OPS", "Ledger"]

#: The ops the engine records itself; ``Repository.record`` refuses them, so a caller's record
#: is never mistaken for one of the engine's own.
ENGINE_OPS = frozenset({"backup", "restore", "verify", "drill", "copy", "forget", "prune", "repair",
                        "repair-index"})
_OP = re.compile(r"[a-z][a-z0-9-]{0,39}")


class Ledger:
    """Mixed into ``Repository``, which provides ``_repo``."""

    _repo: _Engine

    def ledger(self, *, since: str | None = None, op: str | None = None) -> list[dict[str, Any]]:
        """The ledger's records (oldest first), through the local SQLite catalog
        (``$XDG_CACHE_HOME/weightvault/ledger-<id>.sqlite``), which is brought up to date first."""
        return _audit.query(self._repo, since, op)

    def verify_ledger(self) -> LedgerCheck:
        """Check the chain: every record readable, none missing, each chained onto the one before;
        a tail that this machine saw and that is gone is reported too."""
        return _audit.verify(self._repo)

    def record(self, op: str, *, ok: bool = True, detail: str = "", source: str | None = None,
               target: str | None = None, snapshots: Sequence[str] = (), nbytes: int = 0,
               duration_s: float = 0.0) -> None:
        """Append a record of something done outside the engine (e.g. ``failover``) to the
        ledger, chained like the engine's own. ``op`` is a lowercase name (letters, digits, ``-``)
        that is not one of ``ENGINE_OPS`` (UsageError). Like every ledger append, a failure to
        write is logged and does not raise; a repository before format v4 keeps no ledger."""
        if not _OP.fullmatch(op) or op in ENGINE_OPS:
            raise UsageError(f"ledger op {op!r} is not a name of your own (lowercase letters, digits and '-',"
                             " at most 40, not one the engine records)", hint="e.g. failover")
        rec = {"op": op, "ok": ok, "snapshots": list(snapshots), "source": source, "target": target,
               "bytes": nbytes, "detail": detail[:2000]}
        _audit.append(self._repo, rec, time.perf_counter() - max(0.0, duration_s))
