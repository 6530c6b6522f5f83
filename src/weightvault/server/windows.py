"""Maintenance windows: when risky operations (deletes, overwrites) are allowed.

A window is written ``DAYS HH:MM-HH:MM ZONE``, e.g. ``Mon-Fri 09:00-18:00 Europe/Berlin``: DAYS is a
day (``Sat``), a range (``Mon-Fri``), a comma list of either (``Mon,Wed-Thu``) or ``daily``; the
times are local to the IANA zone (``UTC`` allowed); an end at or before the start runs past
midnight into the next day (``Fri 22:00-02:00`` is open until Saturday 02:00). A server with no
windows configured allows risky operations at any time.

A break-glass window (``weightvault serve break-glass``) is one extra window from now for a set
time, stored in the server's state directory as ``break-glass.json``; it is audited when opened
and expires by itself.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from weightvault.errors import ConfigFileError
from weightvault.paths import atomic_write

__all__ = ["BreakGlass", "Window", "open_window", "parse_window"]

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SHAPE = re.compile(r"^\s*(\S+)\s+(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s+(\S+)\s*$")


@dataclass(frozen=True)
class Window:
    text: str
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after local midnight, 0-1439
    end: int    # 1-1440 (24:00 is the end of the day)
    zone: ZoneInfo

    def contains(self, now: datetime) -> bool:
        """Whether the timezone-aware ``now`` falls inside this window."""
        local = now.astimezone(self.zone)
        t = local.hour * 60 + local.minute + (local.second + local.microsecond / 1e6) / 60
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= t < self.end
        # past midnight: the evening of a listed day, or the morning after one
        return (day in self.days and t >= self.start) or ((day - 1) % 7 in self.days and t < self.end)


def _days(text: str, window: str) -> frozenset[int]:
    if text.lower() in ("daily", "*"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in text.lower().split(","):
        lo, _, hi = part.partition("-")
        try:
            a, b = _DAYS.index(lo[:3]), _DAYS.index((hi or lo)[:3])
        except ValueError:
            raise ConfigFileError(f"maintenance window {window!r}: {part!r} is not a day or a day range",
                                  hint="write days as Mon, Mon-Fri, Mon,Wed or daily") from None
        out.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(out)


def parse_window(text: str) -> Window:
    """``text`` as a Window; ConfigFileError saying what is wrong with it."""
    m = _SHAPE.match(text)
    if not m:
        raise ConfigFileError(f"maintenance window {text!r} is not 'DAYS HH:MM-HH:MM ZONE'",
                              hint="for example 'Mon-Fri 09:00-18:00 Europe/Berlin'")
    days, h1, m1, h2, m2, zone = m.groups()
    start, end = int(h1) * 60 + int(m1), int(h2) * 60 + int(m2)
    if int(m1) > 59 or int(m2) > 59 or start >= 24 * 60 or end > 24 * 60:
        raise ConfigFileError(f"maintenance window {text!r}: a time is out of range (00:00 to 24:00)")
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigFileError(f"maintenance window {text!r}: unknown time zone {zone!r}",
                              hint="use an IANA zone name such as Europe/Berlin or UTC") from None
    if start == end:
        raise ConfigFileError(f"maintenance window {text!r} is empty (it starts when it ends)",
                              hint="a whole day is 00:00-24:00")
    return Window(text.strip(), _days(days, text), start, end, tz)


@dataclass(frozen=True)
class BreakGlass:
    until: datetime
    by: str
    reason: str

    @staticmethod
    def path(state_dir: Path) -> Path:
        return state_dir / "break-glass.json"

    @classmethod
    def load(cls, state_dir: Path) -> BreakGlass | None:
        try:
            doc = json.loads(cls.path(state_dir).read_text())
            return cls(datetime.fromisoformat(doc["until"]), str(doc["by"]), str(doc["reason"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError):
            return None  # unreadable: no break-glass (the safe side)

    @classmethod
    def open(cls, state_dir: Path, minutes: float, by: str, reason: str, now: datetime | None = None) -> BreakGlass:
        until = (now or datetime.now(UTC)) + timedelta(minutes=minutes)
        bg = cls(until, by, reason)
        os.makedirs(state_dir, exist_ok=True)
        atomic_write(cls.path(state_dir), json.dumps({"until": until.isoformat(), "by": by, "reason": reason}).encode())
        return bg


def open_window(windows: tuple[Window, ...], state_dir: Path, now: datetime) -> str | None:
    """The window that is open at ``now`` (its text, or "break-glass until ..."), else None. With no
    windows configured, always "always" (risky operations are not restricted)."""
    if not windows:
        return "always"
    for w in windows:
        if w.contains(now):
            return w.text
    bg = BreakGlass.load(state_dir)
    if bg is not None and now < bg.until:
        return f"break-glass until {bg.until.isoformat(timespec='seconds')} ({bg.by}: {bg.reason})"
    return None
