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


def load_plans(backend: Backend, key: MasterKey) -> list[Plan]:
    """Every plan in the repository. An unreadable plan raises IntegrityError: its packs are
    unknown, so no client could tell which blobs it must not reuse."""
    plans = []
    for name, _ in backend.list(FileType.PLAN):
        try:
            stored = backend.load(FileType.PLAN, name)
        except ObjectNotFoundError:
            continue  # completed meanwhile
        what = f"plans/{name}"
        doc = objects.loads(open_document(key, stored, KIND_PLAN, what))
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise UnsupportedFormatError(f"{what} has an unknown version; upgrade weightvault")
        try:
            waiting = doc["waiting"]
            plans.append(Plan(
                frozenset(str(p) for p in doc["packs"]),
                None if waiting is None else frozenset(str(w) for w in waiting),
                str(doc.get("created", "")), str(doc.get("host", "")), name,
            ))
        except (KeyError, TypeError) as exc:
            raise IntegrityError(f"{what} is malformed: {exc}") from exc
    return plans


def remove_plan(backend: Backend, plan: Plan) -> None:
    backend.remove(FileType.PLAN, plan.name)
