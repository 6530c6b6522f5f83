"""Notifications: the policy's ``[[notify]]`` tables, fed by the agent's events.

``Notifier`` is an ``EventLog`` listener: each event a notifier wants (``NotifySpec.wants``) is
queued and sent from one background thread, so a slow or failing endpoint never holds up a
backup. Each send is tried ``1 + retries`` times with exponential backoff (1 s, 2 s, 4 s ... at
most 60 s); a notifier that still fails is reported as a ``notify.failed`` log line (its number
and kind, never its URL) and the event is dropped. Kinds:

* **webhook**: POST of the event as JSON (``format = "json"``), or ``{"text": ...}`` (Slack),
  ``{"content": ...}`` (Discord);
* **ping**: Healthchecks-style: ``<url>/start`` for a ``*.start`` event, ``<url>/fail`` for an
  error (``*.error``, ``rpo_breach``, ``precheck_failed``, ``*.failed``), ``<url>`` otherwise;
  the summary line is the body;
* **email**: over SMTP (``STARTTLS`` unless ``starttls = false``; login with ``smtp_user`` and
  the password from ``$smtp_password_env``); subject ``[weightvault] <event> <source>``, the
  event as JSON in the body;
* **command**: run with the event in ``WV_EVENT`` (its name), ``WV_EVENT_JSON`` and one
  ``WV_EVENT_<FIELD>`` per field; a non-zero exit is a failure.

URLs from ``*_env`` variables are read when the notifier is built, from the agent's environment.
"""

from __future__ import annotations

import json
import os
import queue
import smtplib
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from typing import Any

from weightvault.agent.events import Event, EventLog, redact

__all__ = ["Notifier", "summary"]

_ERRORS = ("rpo_breach", "precheck_failed")


def summary(ev: Mapping[str, Any]) -> str:
    """One line for people: event, source, snapshot, and the error or detail."""
    parts = [f"weightvault {ev.get('event')}"]
    for key in ("source", "repository", "snapshot", "step"):
        if ev.get(key) is not None:
            parts.append(f"{key}={ev[key]}")
    text = ev.get("error") or ev.get("detail") or ev.get("reason")
    return " ".join(parts) + (f": {text}" if text else "")


def _is_error(name: str) -> bool:
    return name.endswith((".error", ".failed")) or name in _ERRORS


class Notifier:
    """See the module docstring. ``specs``: ``NotifySpec`` objects (duck-typed: the policy layer's)."""

    def __init__(self, specs: list[Any], log: EventLog, *, env: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.specs, self.log, self.sleep = list(specs), log, sleep
        self.env = dict(os.environ if env is None else env)
        self.sent = 0
        self.failed = 0
        self._q: queue.Queue[tuple[Any, Event] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="weightvault-notify", daemon=True)
        self._thread.start()

    def __call__(self, ev: Event) -> None:
        if ev.name.startswith("notify."):
            return  # never notify about notifying
        for spec in self.specs:
            if spec.wants(ev.name):
                self._q.put((spec, ev))

    def close(self, timeout: float = 30.0) -> None:
        """Send what is queued (up to ``timeout`` seconds), then stop the thread."""
        self._q.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            spec, ev = item
            self._deliver(spec, ev)

    def _deliver(self, spec: Any, ev: Event) -> None:
        attempts = 1 + spec.retries
        for attempt in range(1, attempts + 1):
            try:
                self._send(spec, ev)
                self.sent += 1
                return
            except Exception as exc:  # any failure of the endpoint is retried, then reported
                error = redact(str(exc)) or type(exc).__name__
                if attempt < attempts:
                    self.sleep(min(60.0, 2.0 ** (attempt - 1)))
        self.failed += 1
        self.log._write(Event(time=ev["time"], level="warning", event="notify.failed", notifier=spec.index,
                              kind=spec.kind, about=ev.name, attempts=attempts, error=error))

    # -- senders -----------------------------------------------------------------------------------
    def _target(self, spec: Any) -> str:
        if spec.target:
            return str(spec.target)
        value = self.env.get(spec.target_env or "")
        if not value:
            raise RuntimeError(f"${spec.target_env} is not set")
        return value

    def _send(self, spec: Any, ev: Event) -> None:
        if spec.kind == "webhook":
            body: Any = dict(ev)
            if spec.format == "slack":
                body = {"text": summary(ev)}
            elif spec.format == "discord":
                body = {"content": summary(ev)}
            self._post(self._target(spec), json.dumps(body).encode(), "application/json", spec.timeout)
        elif spec.kind == "ping":
            url = self._target(spec).rstrip("/")
            if ev.name.endswith(".start"):
                url += "/start"
            elif _is_error(ev.name):
                url += "/fail"
            self._post(url, summary(ev).encode(), "text/plain; charset=utf-8", spec.timeout)
        elif spec.kind == "email":
            self._email(spec, ev)
        elif spec.kind == "command":
            env = {**self.env, "WV_EVENT": ev.name, "WV_EVENT_JSON": json.dumps(ev)}
            env.update({f"WV_EVENT_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in ev.items()})
            subprocess.run(list(spec.command), env=env, check=True, timeout=spec.timeout, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            raise RuntimeError(f"unknown notifier kind {spec.kind!r}")

    @staticmethod
    def _post(url: str, data: bytes, content_type: str, timeout: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise RuntimeError("the notifier's URL is not http:// or https://")
        req = urllib.request.Request(url, data=data, method="POST",  # noqa: S310 - http(s) only, checked above
                                     headers={"Content-Type": content_type, "User-Agent": "weightvault-agent"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the user's own endpoint
                resp.read()
        except urllib.error.HTTPError as exc:  # holds the open response: close it, keep the status only
            exc.close()
            raise RuntimeError(f"HTTP {exc.code} {exc.reason}") from None

    def _email(self, spec: Any, ev: Event) -> None:
        host, _, port = str(spec.smtp).rpartition(":")
        msg = EmailMessage()
        msg["Subject"] = f"[weightvault] {ev.name}" + (f" {ev['source']}" if ev.get("source") else "")
        msg["From"], msg["To"] = spec.sender, spec.target
        msg.set_content(summary(ev) + "\n\n" + json.dumps(ev, indent=2))
        with smtplib.SMTP(host, int(port), timeout=spec.timeout) as smtp:
            if spec.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if spec.smtp_user:
                password = self.env.get(spec.smtp_password_env or "", "")
                smtp.login(spec.smtp_user, password)
            smtp.send_message(msg)
