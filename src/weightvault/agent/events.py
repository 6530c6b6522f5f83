"""The agent's events: one log line each (text or JSON), handed to listeners (notifications,
metrics), with secrets taken out first.

An event has a name (``backup.success``, ``handoff``, ``precheck_failed`` ...), a level, a UTC
time (to the millisecond) and fields. Text lines read ``2026-12-01T12:00:00.250Z info
backup.success source=exp snapshot=1a2b3c4d``; JSON lines are one object per line. Every string field passes ``redact``:
the user and password of a URL, and query values whose names look like secrets (``token``,
``key``, ``secret``, ``password``, ``sig``) are replaced by ``***``, so a webhook URL or an
endpoint with credentials never reaches the log, a notification or the ledger.
"""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["Event", "EventLog", "redact"]

_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?P<name>[?&][^=&\s]*(?:token|key|secret|password|passwd|sig|signature|auth)[^=&\s]*=)"
                           r"[^&\s]*", re.IGNORECASE)
LEVELS = ("debug", "info", "warning", "error")


def redact(text: str) -> str:
    """``text`` with URL credentials and secret-looking query values replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group('name')}***", text)


class Event(dict[str, Any]):
    """``{"time", "level", "event", **fields}``; ``name`` and ``level`` as properties."""

    @property
    def name(self) -> str:
        return str(self["event"])

    @property
    def level(self) -> str:
        return str(self["level"])


def _clean(v: Any) -> Any:
    if isinstance(v, str):
        return redact(v)
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    return v


class EventLog:
    """Writes each event to ``stream`` (``fmt``: "text" or "json") and passes it to every
    listener; a listener that raises is reported once as a warning line, never re-raised."""

    def __init__(self, stream: TextIO | None = None, fmt: str = "text", clock: Callable[[], datetime] | None = None,
                 min_level: str = "info") -> None:
        if fmt not in ("text", "json"):
            raise ValueError(f"log format {fmt!r}: use text or json")
        self.stream, self.fmt = stream or sys.stderr, fmt
        self.clock = clock or (lambda: datetime.now(UTC))
        self.min_level = LEVELS.index(min_level)
        self.listeners: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()

    def emit(self, name: str, level: str = "info", **fields: Any) -> Event:
        now = self.clock()
        ev = Event(time=now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z", level=level, event=name,
                   **{k: _clean(v) for k, v in fields.items() if v is not None})
        if LEVELS.index(level) >= self.min_level:
            self._write(ev)
        for listener in list(self.listeners):
            try:
                listener(ev)
            except Exception as exc:  # a listener (notifier, metrics) never stops the agent
                self._write(Event(time=ev["time"], level="warning", event="listener.error",
                                  listener=getattr(listener, "__qualname__", repr(listener)), error=redact(str(exc))))
        return ev

    def _write(self, ev: Event) -> None:
        if self.fmt == "json":
            line = json.dumps(ev, sort_keys=False, default=str)
        else:
            rest = " ".join(f"{k}={_text(v)}" for k, v in ev.items() if k not in ("time", "level", "event"))
            line = f"{ev['time']} {ev['level']} {ev['event']}" + (f" {rest}" if rest else "")
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


def _text(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return json.dumps(s) if (not s or any(c.isspace() or c in '"=' for c in s)) else s
