"""``regions.toml``: the regions a failover controller watches, how, and where it routes.

::

    [failover]
    interval = "10s"            # between probe rounds
    timeout = "2s"              # a probe slower than this failed
    failure_threshold = 3       # consecutive failed probes: unhealthy
    success_threshold = 2       # consecutive good probes: healthy
    min_dwell = "5min"          # after a change, before a failback (doubled per recent failover)
    max_dwell = "1h"
    backoff_window = "1h"
    manual_failback = false     # true: a failback waits for `weightvault failover approve`
    state_dir = "failover"      # state.json, events.jsonl, approve (relative to this file)

    [actuator]
    kind = "weights-file"       # the routing as JSON {"region": weight}, written atomically
    path = "routing.json"
    reload = ["nginx", "-s", "reload"]   # optional: run after each change

    [regions.eu]
    health_url = "http://10.0.0.1:8080/health"
    priority = 1                # lower is preferred
    weight = 100
    expected_sha256 = "9f2c..." # the served weights' SHA-256, as the health endpoint reports it

A health endpoint answers 200 with JSON; ``{"status": "healthy"}`` (or no ``status``) is healthy,
and ``model_sha256`` is the identity compared with ``expected_sha256``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightvault import api
from weightvault.errors import ConfigFileError, UsageError
from weightvault.failover.machine import RegionSpec, Spec

__all__ = ["FailoverConfig", "RegionConfig", "load_config"]

_FAILOVER = {"interval", "timeout", "failure_threshold", "success_threshold", "min_dwell", "max_dwell",
             "backoff_window", "manual_failback", "state_dir"}
_REGION = {"health_url", "priority", "weight", "expected_sha256"}


@dataclass(frozen=True)
class RegionConfig:
    name: str
    health_url: str
    priority: int
    weight: int
    expected_sha256: str | None


@dataclass(frozen=True)
class FailoverConfig:
    spec: Spec
    regions: tuple[RegionConfig, ...]
    interval: float
    timeout: float
    state_dir: Path
    weights_file: Path
    reload: tuple[str, ...] = ()


def _seconds(value: Any, key: str, path: Path) -> float:
    try:
        return api.parse_interval(str(value)).total_seconds()
    except UsageError as exc:
        raise ConfigFileError(f"{path}: {key} = {value!r}: {exc.message}", hint=exc.hint) from None


def _int(value: Any, key: str, path: Path, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigFileError(f"{path}: {key} = {value!r} is not a whole number of at least {low}")
    return value


def _region(name: str, r: Any, path: Path) -> RegionConfig:
    if not isinstance(r, dict) or "health_url" not in r or set(r) - _REGION:
        raise ConfigFileError(f"{path}: [regions.{name}] needs health_url and knows only {', '.join(sorted(_REGION))}",
                              hint='e.g. health_url = "http://10.0.0.1:8080/health"')
    url = str(r["health_url"])
    if not url.startswith(("http://", "https://")):
        raise ConfigFileError(f"{path}: [regions.{name}] health_url {url!r} is not an http(s) URL")
    sha = r.get("expected_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ConfigFileError(f"{path}: [regions.{name}] expected_sha256 is not a SHA-256 (64 hex digits)")
    return RegionConfig(name, url, _int(r.get("priority", 1), f"regions.{name}.priority", path),
                        _int(r.get("weight", 100), f"regions.{name}.weight", path, 0), sha)


def load_config(path: Path) -> FailoverConfig:
    """Read and check ``path``; ConfigFileError (exit 7) naming what is wrong."""
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"no failover configuration at {path}",
                              hint="write one (docs/FAILOVER.md has an example) and pass it with --config") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read {path}: {exc}") from None
    f = doc.get("failover", {})
    if not isinstance(f, dict) or set(f) - _FAILOVER:
        raise ConfigFileError(f"{path}: unknown key(s) in [failover]: {', '.join(sorted(set(f) - _FAILOVER))}",
                              hint=f"known keys: {', '.join(sorted(_FAILOVER))}")
    regions = tuple(_region(n, r, path) for n, r in (doc.get("regions") or {}).items())
    if len(regions) < 2:
        raise ConfigFileError(f"{path} names {len(regions)} region(s); failover needs at least two",
                              hint="add [regions.NAME] tables with health_url, priority and weight")
    a = doc.get("actuator", {})
    if not isinstance(a, dict) or a.get("kind", "weights-file") != "weights-file" or "path" not in a:
        raise ConfigFileError(f"{path}: [actuator] needs kind = \"weights-file\" and a path",
                              hint='e.g. [actuator] path = "routing.json"')
    reload = a.get("reload", [])
    if not isinstance(reload, list) or not all(isinstance(x, str) for x in reload):
        raise ConfigFileError(f"{path}: [actuator] reload must be a command as a list of strings")
    spec = Spec(tuple(RegionSpec(r.name, r.priority, r.weight, r.expected_sha256) for r in regions),
                _int(f.get("failure_threshold", 3), "failure_threshold", path),
                _int(f.get("success_threshold", 2), "success_threshold", path),
                _seconds(f.get("min_dwell", "5min"), "min_dwell", path),
                _seconds(f.get("max_dwell", "1h"), "max_dwell", path),
                _seconds(f.get("backoff_window", "1h"), "backoff_window", path), bool(f.get("manual_failback", False)))
    base = path.parent
    return FailoverConfig(spec, regions, _seconds(f.get("interval", "10s"), "interval", path),
                          _seconds(f.get("timeout", "2s"), "timeout", path),
                          (base / str(f.get("state_dir", "failover"))).resolve(), (base / str(a["path"])).resolve(),
                          tuple(reload))
