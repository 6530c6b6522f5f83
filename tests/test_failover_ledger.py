"""The failover controller's ledger writer: records are written in order by one thread, and
``flush`` returns only once everything queued before it is in the repository's ledger (what a
restore-before-promote waits for, so the decision precedes the restore's own record)."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import PASSWORD
from weightvault.api import Repository
from weightvault.failover.ledger import LedgerTarget, LedgerWriter
from weightvault.failover.machine import Event


def test_flush_waits_for_what_was_queued_and_says_when_it_timed_out(repo: Repository, repo_path: Path) -> None:
    opened = threading.Event()

    def password() -> str:  # the repository is opened only once this is let through
        opened.wait(30)
        return PASSWORD

    writer = LedgerWriter([LedgerTarget(str(repo_path), password)])
    try:
        writer.add([Event("no-healthy-region", 1.0, None, {"eu": 100}, "every region down")], {"eu": 100})
        assert writer.flush(0.2) is False  # the writer is still blocked opening the repository
        assert [r["op"] for r in repo.ledger()] == []
        opened.set()
        assert writer.flush(30) is True
        records = repo.ledger()
        assert [r["op"] for r in records] == ["failover"]
        assert records[0]["detail"].startswith("no-healthy-region: every region down")
        assert records[0]["ok"] is False
    finally:
        writer.close()
    assert writer.tried == 1 and writer.failed == 0


def test_flush_without_a_target_or_a_record_returns_at_once() -> None:
    assert LedgerWriter([]).flush(0) is True
