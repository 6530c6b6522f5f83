"""The policy journal: one JSON line per step ``policy apply`` and ``tier run`` carried out.

It records what ran, when, where and with which result, and tells when a repository was last
pruned. (The tamper-evident ledger kept in the repository is separate.) Each record is appended
and fsynced; a torn last line (a crash mid-write) is ignored when reading.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from weightvault.errors import LocalPathError, NoSpaceError
from weightvault.paths import state_home

__all__ = ["append_record", "default_journal_path", "read_records"]


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/weightvault/journal.jsonl``."""
    return state_home() / "journal.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` durably. A failure (the disk full or failing) raises NoSpaceError or
    LocalPathError naming the journal: the step it records has run, so the caller stops there
    rather than go on with a schedule it can no longer keep."""
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        what = f"could not record a step in the policy journal {path}: {exc.strerror or exc}"
        hint = ("the step itself ran (see `weightvault snapshots`); free space or fix the disk, then run it again"
                " (what is no longer due is skipped)")
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(what, hint=hint) from exc
        raise LocalPathError(what, hint=hint, errno=exc.errno, filename=str(path)) from exc


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise LocalPathError(f"could not read the policy journal {path}: {exc.strerror or exc}",
                             hint="`[settings] journal` in the policy names it; it must be a file this user may"
                                  " read and write", errno=exc.errno, filename=str(path)) from exc
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line
        if isinstance(rec, dict):
            out.append(rec)
    return out
