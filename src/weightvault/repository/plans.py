"""Prune plans (format v4): ``plans/<name>``, sealed documents of kind PLAN.

A plan names packs that prune has *condemned*: it will delete them once no client that might
still use them is running. Its document::

    {"version": 1, "created": "<ISO 8601 UTC>", "host": "...", "packs": [pack hex, ...],
     "waiting": null | [lock name, ...]}

``waiting`` lists the locks that existed right after the plan was durable (prune's own excluded):
the clients that may have loaded the index before the plan and may still reference a condemned
blob. ``null`` means not recorded yet (prune stopped in between); the next prune then records the
locks it sees, a superset of those that remain. Every client that takes a lock afterwards reads
the plans first and never reuses a blob held only by condemned packs (``MasterIndex.usable``).
The protocol, and why it is safe, is in docs/FORMAT.md section 9.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from weightvault.backends.base import Backend, FileType
from weightvault.codec.crypto import MasterKey
from weightvault.errors import IntegrityError, ObjectNotFoundError, UnsupportedFormatError
from weightvault.format import objects
from weightvault.format.layout import KIND_PLAN
from weightvault.repository.index import open_document, seal_document

__all__ = ["Plan", "load_plans", "remove_plan", "save_plan"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    packs: frozenset[str]
    waiting: frozenset[str] | None
    created: str = ""
    host: str = ""
    name: str = ""


def save_plan(backend: Backend, key: MasterKey, packs: set[str] | frozenset[str],
              waiting: set[str] | frozenset[str] | None, created: str = "") -> Plan:
    """Write a plan durably and return it (with its name)."""
    created = created or datetime.now(UTC).isoformat()
    host = socket.gethostname()
    doc = {"version": 1, "created": created, "host": host, "packs": sorted(packs),
           "waiting": None if waiting is None else sorted(waiting)}
    name, stored = seal_document(key, doc, KIND_PLAN)
    backend.save(FileType.PLAN, name, stored)
    return Plan(frozenset(packs), None if waiting is None else frozenset(waiting), created, host, name)


def load_plans(backend: Backend, key: MasterKey, unreadable: list[str] | None = None) -> list[Plan]:
    """Every readable plan in the repository. An unreadable one is logged, its name appended to
    ``unreadable``, and skipped: that is safe, since only prune deletes packs and only those of
    plans it can read (its packs stay, and a later prune judges them afresh)."""
    plans = []
    for name, _ in backend.list(FileType.PLAN):
        try:
            plans.append(_load(backend, key, name))
        except ObjectNotFoundError:
            continue  # completed meanwhile
        except (IntegrityError, UnsupportedFormatError) as exc:
            log.warning("skipping unreadable prune plan %s: %s", name, exc.message)
            if unreadable is not None:
                unreadable.append(name)
    return plans


def _load(backend: Backend, key: MasterKey, name: str) -> Plan:
    what = f"plans/{name}"
    doc = objects.loads(open_document(key, backend.load(FileType.PLAN, name), KIND_PLAN, what))
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise UnsupportedFormatError(f"{what} has an unknown version; upgrade weightvault")
    try:
        waiting = doc["waiting"]
        return Plan(
            frozenset(str(p) for p in doc["packs"]),
            None if waiting is None else frozenset(str(w) for w in waiting),
            str(doc.get("created", "")), str(doc.get("host", "")), name,
        )
    except (KeyError, TypeError) as exc:
        raise IntegrityError(f"{what} is malformed: {exc}") from exc


def remove_plan(backend: Backend, plan: Plan) -> None:
    backend.remove(FileType.PLAN, plan.name)
