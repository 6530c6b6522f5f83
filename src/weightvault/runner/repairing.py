"""Restores that heal on the way: restore, and if damaged data stops it, rewrite that data from a
replica (``heal_from``) and restore again."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

from weightvault.errors import IntegrityError
from weightvault.ops.heal import HealResult
from weightvault.ops.restore import RestoreResult
from weightvault.policy import journal

__all__ = ["HealingRepo", "journal_repair", "restore_repairing"]


class HealingRepo(Protocol):
    """What a healing restore needs of a repository (``weightvault.api.Repository`` is one)."""

    def restore(self, *args: Any, **kwargs: Any) -> RestoreResult: ...

    def heal_from(self, *args: Any, **kwargs: Any) -> HealResult: ...


def restore_repairing(repo: HealingRepo, replica: Any, spec: str, target: Any, *, overwrite: str,
                      **options: Any) -> RestoreResult:
    """Restore ``spec``; on an IntegrityError heal from ``replica`` (IntegrityError if nothing
    could be repaired), then restore again, replacing the files the first attempt left
    (``overwrite`` "error" becomes "if-changed")."""
    try:
        return repo.restore(spec, target, overwrite=overwrite, **options)
    except IntegrityError as exc:
        healed = repo.heal_from(replica)
        if not healed.repaired:
            raise IntegrityError("restore found damaged data and the replica could not repair it: "
                                 + "; ".join(why for _, why in healed.unrepaired[:3]),
                                 hint="run `weightvault check --read-data` to see what is damaged") from exc
    return repo.restore(spec, target, overwrite="if-changed" if overwrite == "error" else overwrite, **options)


def journal_repair(location: str, replica: str, res: HealResult) -> None:
    """Record a repair in the policy journal (``status`` reads it)."""
    journal.append_record(journal.default_journal_path(), {
        "time": datetime.now(UTC).isoformat(), "step": "repair", "repository": location, "replica": replica,
        "ok": res.ok, "repaired": len(res.repaired),
        "detail": f"{len(res.repaired)} blob(s) rewritten from the replica, {len(res.unrepaired)} not"})
