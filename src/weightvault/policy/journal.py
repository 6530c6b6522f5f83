"""The policy journal: one JSON line per step ``policy apply`` and ``tier run`` carried out.

It records what ran, when, where and with which result, and tells when a repository was last
pruned. (The tamper-evident ledger kept in the repository is separate.) Each record is appended
and fsynced; a torn last line (a crash mid-write) is ignored when reading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from weightvault.paths import state_home

__all__ = ["append_record", "default_journal_path", "read_records"]


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/weightvault/journal.jsonl``."""
    return state_home() / "journal.jsonl"


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn line
        if isinstance(rec, dict):
            out.append(rec)
    return out
