"""The policy's agent tables: ``[windows.NAME]`` and ``[[notify]]`` (parsed with the rest of the
file by ``spec.parse_policy``; every error a ConfigFileError naming the line).

    [checks.weekly]                  # repository checks that `policy apply` and the agent run when due
    repository = "hot"
    every = "7d"
    read_data = "10%"                # false: structure only; true: every pack; "N%": the next N % in rotation

    [windows.nightly]                # heavy or risky steps run only inside a window that lists them
    days = "Mon-Fri"                 # optional, default every day: Mon-Fri, Sat,Sun, Mon,Wed-Fri, *
    hours = "22:00-06:00"            # may cross midnight; "00:00-24:00" is the whole day
    timezone = "Europe/Berlin"       # optional, default UTC (IANA names)
    steps = ["prune", "tier", "drill", "copy", "check"]

    [[notify]]                       # one table per notifier
    on = ["*.error", "rpo_breach", "precheck_failed"]   # event names or fnmatch patterns
    webhook = "https://example.com/hook"   # or webhook_env = "NAME" (the URL from the environment)
    format = "slack"                 # json (default) | slack | discord
    # ping = "https://hc-ping.com/UUID" (Healthchecks: <url>/start, <url>, <url>/fail), or ping_env
    # email = "oncall@example.com", smtp = "smtp.example.com:587", smtp_user = "wv",
    #   smtp_password_env = "SMTP_PASSWORD", from = "weightvault@example.com", starttls = true
    # command = ["/usr/local/bin/page", "--team", "ml"]   (the event in WV_EVENT_* variables)
    retries = 3                      # optional: attempts after the first, with backoff
    timeout = "10s"                  # optional: per attempt

Secrets (a webhook URL with a token, an SMTP password) can come from the environment (``*_env``)
so the policy file can be shared; whatever their source they never reach logs or the ledger.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["EVENTS", "WINDOW_STEPS", "CheckSpec", "NotifySpec", "WindowSpec", "parse_checks", "parse_notify",
           "parse_windows"]

KINDS = ("backup", "prune", "check", "copy", "tier", "drill")
PHASES = ("start", "success", "error", "warning")
EVENTS = (*(f"{k}.{p}" for k in KINDS for p in PHASES), "rpo_breach", "precheck_failed", "handoff",
          "handoff.failed", "policy.error", "policy.reload_failed", "agent.start", "agent.stop",
          *(f"failover.{k}" for k in ("failover", "failback", "no-healthy-region", "restore-needed", "restored",
                                       "restore-failed", "recovered", "actuate-failed", "unhealthy", "healthy",
                                       "failback-waiting", "error")))
WINDOW_STEPS = ("prune", "tier", "drill", "copy", "check")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TARGETS = ("webhook", "webhook_env", "ping", "ping_env", "email", "command")


@dataclass(frozen=True)
class WindowSpec:
    name: str
    days: frozenset[int]  # 0 = Monday: the days a window *starts* on
    start: dtime
    end: dtime | None  # None: midnight at the end of the day; end <= start: crosses midnight
    timezone: str
    steps: tuple[str, ...]

    def is_open(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        t = local.time().replace(tzinfo=None)
        today, yesterday = local.weekday(), (local.weekday() - 1) % 7
        if self.end is None or self.end > self.start:
            return today in self.days and self.start <= t and (self.end is None or t < self.end)
        return (today in self.days and t >= self.start) or (yesterday in self.days and t < self.end)

    def next_open(self, now: datetime) -> datetime:
        """When the window opens next (``now`` if it is open), to the minute."""
        t = now.replace(second=0, microsecond=0)
        for _ in range(8 * 24 * 60):
            if self.is_open(t):
                return max(t, now)
            t += timedelta(minutes=1)
        return t


@dataclass(frozen=True)
class CheckSpec:
    name: str
    repository: str
    every: timedelta = timedelta(days=7)
    read_data: bool = False
    subset: str | None = None  # "N%" (rotating) or "n/t": read that part of the packs


def parse_checks(w: Any, raw: dict[str, Any], repositories: dict[str, Any]) -> dict[str, CheckSpec]:
    """``[checks.NAME]`` tables."""
    from weightvault.policy import spec as s

    out: dict[str, CheckSpec] = {}
    for name, table in raw.items():
        where = f"checks.{name}"
        s._named_table(w, where, name, table, {"repository", "every", "read_data"})
        repo = s._get(w, where, table, "repository", str, required=True)
        if repo not in repositories:
            raise w.error(where, "repository", f"no repository named {repo!r} in [repositories]")
        rd = table.get("read_data", False)
        subset = None
        if isinstance(rd, str):
            if not re.fullmatch(r"(\d+(\.\d+)?%|\d+/\d+)", rd.strip()):
                raise w.error(where, "read_data", 'true, false, "N%" (the next N % in rotation) or "n/t"')
            subset = rd.strip()
        elif not isinstance(rd, bool):
            raise w.error(where, "read_data", 'true, false, "N%" (the next N % in rotation) or "n/t"')
        every = s._duration(w, where, table, "every", interval=True) or timedelta(days=7)
        out[name] = CheckSpec(name, repo, every, rd is True, subset)
    return out


@dataclass(frozen=True)
class NotifySpec:
    index: int  # 1-based position among the [[notify]] tables
    on: tuple[str, ...]
    kind: str  # webhook | ping | email | command
    target: str | None = None  # URL or address; None when it comes from ``target_env``
    target_env: str | None = None
    format: str = "json"
    command: tuple[str, ...] = ()
    smtp: str | None = None
    smtp_user: str | None = None
    smtp_password_env: str | None = None
    sender: str | None = None
    starttls: bool = True
    retries: int = 3
    timeout: float = 10.0

    def wants(self, event: str) -> bool:
        return any(fnmatch.fnmatchcase(event, p) for p in self.on)


def _days(text: str) -> frozenset[int] | None:
    t = text.strip().lower()
    if t in ("*", "daily", "every day"):
        return frozenset(range(7))
    out: set[int] = set()
    for part in t.split(","):
        a, _, b = part.strip().partition("-")
        if a[:3] not in _DAYS or (b and b[:3] not in _DAYS):
            return None
        i, j = _DAYS.index(a[:3]), _DAYS.index((b or a)[:3])
        out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    return frozenset(out)


def _hours(text: str) -> tuple[dtime, dtime | None] | None:
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", text)
    if not m:
        return None
    h1, m1, h2, m2 = (int(x) for x in m.groups())
    if h1 > 23 or m1 > 59 or m2 > 59 or h2 > 24 or (h2 == 24 and m2):
        return None
    return dtime(h1, m1), None if h2 == 24 else dtime(h2, m2)


def parse_windows(w: Any, raw: dict[str, Any]) -> dict[str, WindowSpec]:
    """``[windows.NAME]`` tables; ``w`` is the policy's ``_Where``."""
    from weightvault.policy import spec as s

    out: dict[str, WindowSpec] = {}
    for name, table in raw.items():
        where = f"windows.{name}"
        s._named_table(w, where, name, table, {"days", "hours", "timezone", "steps"})
        days = _days(s._get(w, where, table, "days", str) or "*")
        if days is None:
            raise w.error(where, "days", "use day names or ranges: Mon-Fri, Sat,Sun, Mon,Wed-Fri or *")
        hours = _hours(s._get(w, where, table, "hours", str, required=True))
        if hours is None or hours[0] == hours[1]:
            raise w.error(where, "hours", "use HH:MM-HH:MM, e.g. 22:00-06:00 (crossing midnight) or 00:00-24:00")
        tz = s._get(w, where, table, "timezone", str) or "UTC"
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise w.error(where, "timezone", f"{tz!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        steps = tuple(s._get(w, where, table, "steps", list, required=True))
        bad = [x for x in steps if x not in WINDOW_STEPS]
        if bad or not steps:
            raise w.error(where, "steps", f"list steps from {', '.join(WINDOW_STEPS)} (backups never wait)")
        out[name] = WindowSpec(name, days, hours[0], hours[1], tz, steps)
    return out


def parse_notify(w: Any, raw: Any) -> list[NotifySpec]:
    """``[[notify]]`` tables (an array of tables)."""
    from weightvault.policy import spec as s

    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise w.error("notify", None, "write each notifier as a [[notify]] table")
    out = []
    for i, table in enumerate(raw, start=1):
        where = f"notify.{i}"
        err: Any = _NthError(w, i)
        s._only(err, where, table, {"on", *_TARGETS, "format", "retries", "timeout", "smtp", "smtp_user",
                                    "smtp_password_env", "from", "starttls"})
        on = tuple(s._get(err, where, table, "on", list, required=True))
        for pattern in on:
            if not any(fnmatch.fnmatchcase(e, pattern) for e in EVENTS):
                raise err.error(where, "on", f"{pattern!r} matches no event (events: {', '.join(EVENTS)})")
        targets = [k for k in _TARGETS if k in table]
        if len(targets) != 1:
            raise err.error(where, None, f"give exactly one of {', '.join(_TARGETS)}")
        out.append(_notifier(err, where, table, i, on, targets[0]))
    return out


def _notifier(err: Any, where: str, table: dict[str, Any], i: int, on: tuple[str, ...], key: str) -> NotifySpec:
    from weightvault.policy import spec as s

    kind = key.removesuffix("_env")
    fmt = s._get(err, where, table, "format", str) or "json"
    if fmt not in ("json", "slack", "discord") or (fmt != "json" and kind != "webhook"):
        raise err.error(where, "format", "json, slack or discord, for a webhook")
    retries = s._get(err, where, table, "retries", int)
    timeout = s._duration(err, where, table, "timeout", interval=True)
    common: dict[str, Any] = {"retries": 3 if retries is None else retries,
                              "timeout": timeout.total_seconds() if timeout else 10.0}
    if kind == "command":
        cmd = s._get(err, where, table, "command", list)
        if not cmd:
            raise err.error(where, "command", "a non-empty list: the program and its arguments")
        return NotifySpec(i, on, "command", command=tuple(cmd), **common)
    value = s._get(err, where, table, key, str, required=True)
    if kind == "email":
        smtp = s._get(err, where, table, "smtp", str)
        if not smtp or not re.fullmatch(r"[^:\s]+:\d+", smtp):
            raise err.error(where, "smtp", "email needs smtp = \"HOST:PORT\"")
        return NotifySpec(i, on, "email", value, smtp=smtp, smtp_user=s._get(err, where, table, "smtp_user", str),
                          smtp_password_env=s._get(err, where, table, "smtp_password_env", str),
                          sender=s._get(err, where, table, "from", str) or "weightvault@localhost",
                          starttls=table.get("starttls", True) is not False, **common)
    if key.endswith("_env"):
        return NotifySpec(i, on, kind, target_env=value, format=fmt, **common)
    if not re.match(r"https?://", value):
        raise err.error(where, key, "an http:// or https:// URL")
    return NotifySpec(i, on, kind, value, format=fmt, **common)


class _NthError:
    """``_Where`` for the i-th ``[[notify]]`` table (its line found by counting headers)."""

    def __init__(self, w: Any, i: int) -> None:
        self.w, self.i = w, i

    def error(self, table: str, key: str | None, problem: str) -> Exception:
        from weightvault.errors import ConfigFileError

        heads = [n for n, ln in enumerate(self.w.lines) if re.match(r"^\s*\[\[\s*notify\s*\]\]", ln)]
        line = heads[self.i - 1] + 1 if len(heads) >= self.i else 1
        if key is not None and len(heads) >= self.i:
            stop = heads[self.i] if len(heads) > self.i else len(self.w.lines)
            line = next((n + 1 for n in range(heads[self.i - 1], stop)
                         if re.match(r"^\s*" + re.escape(key) + r"\s*=", self.w.lines[n])), line)
        where = f"{table}.{key}" if key else table
        return ConfigFileError(f"{self.w.path}, line {line}: {where}: {problem}",
                               hint="fix the policy file; `weightvault policy check` validates it")
