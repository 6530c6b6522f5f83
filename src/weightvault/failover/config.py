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
    # or: kind = "route53", hosted_zone_id = "Z123", record_name = "model.example.com.",
    #     record_type = "CNAME", ttl = 60 (and route53_value in each region)

    [regions.eu]
    health_url = "http://10.0.0.1:8080/health"
    priority = 1                # lower is preferred
    weight = 100
    expected_sha256 = "9f2c..." # the served weights' SHA-256, as the health endpoint reports it
    # or expected_file = "model.safetensors": that file's SHA-256 in `snapshot` of `repository`,
    # looked up when the controller starts (so the identity follows the release snapshot)
    # restore before promote ([failover] promote_restore = true, validate_level, promote_timeout):
    model_dir = "/srv/eu/model" # the directory the region's server loads its model from
    repository = "s3://backups-eu/wv"   # the nearest replica
    snapshot = "latest:run=prod"
    password_env = "WV_PASSWORD"        # or password_file

    [[vantage]]                 # optional: probe from several places; without any, from here
    name = "here"
    [[vantage]]
    name = "us-east"
    proxy = "http://prober.us-east:3128"   # an HTTP proxy there that the probes go through
    # [failover] quorum = 2     # vantage points that must see a region healthy (default: a majority)

    [ledger]                    # optional: where route changes are recorded (default: the ledger
    repository = "/backups/wv"  # of every distinct repository the regions name)
    password_env = "WV_PASSWORD"        # or password_file

``validate_level = 4`` with ``validate_check = "module:function"`` runs your check (e.g. a forward
pass) on the restored copy before it is swapped in.

A health endpoint answers 200 with JSON; ``{"status": "healthy"}`` (or no ``status``) is healthy,
and ``model_sha256`` is the identity compared with ``expected_sha256``. ``healthy_status = [200,
204]`` in a region is a status-code rule instead: those codes are healthy whatever the body (a
JSON body's ``model_sha256`` is still read as the identity).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from weightvault import api
from weightvault.errors import ConfigFileError, UsageError
from weightvault.failover.actuators import Actuator, Route53Weighted, WeightsFile
from weightvault.failover.ledger import LedgerTarget
from weightvault.failover.machine import RegionSpec, Spec

__all__ = ["FailoverConfig", "RegionConfig", "Vantage", "load_config", "password_of", "resolve_identities"]

_FAILOVER = {"interval", "timeout", "failure_threshold", "success_threshold", "min_dwell", "max_dwell",
             "backoff_window", "manual_failback", "state_dir", "promote_restore", "validate_level", "validate_check",
             "promote_timeout", "quorum"}
_REGION = {"health_url", "healthy_status", "priority", "weight", "expected_sha256", "expected_file", "model_dir",
           "repository", "snapshot",
           "password_env", "password_file", "route53_value"}
_ACTUATOR = {"kind", "path", "reload", "hosted_zone_id", "record_name", "record_type", "ttl", "endpoint"}
_RESTORE = ("model_dir", "repository", "snapshot")
_LEDGER = {"repository", "password_env", "password_file"}
_VANTAGE = {"name", "proxy"}


@dataclass(frozen=True)
class RegionConfig:
    name: str
    health_url: str
    priority: int
    weight: int
    expected_sha256: str | None
    model_dir: Path | None = None  # restore-before-promote: the directory the region's server loads
    repository: str | None = None  # ... from this repository (the nearest replica)
    snapshot: str | None = None  # ... this snapshot (an id, latest:run=prod, ...)
    password_env: str | None = None
    password_file: Path | None = None
    route53_value: str | None = None  # this region's value of the weighted record
    healthy_status: tuple[int, ...] | None = None  # a status-code rule instead of the JSON answer
    expected_file: str | None = None  # the identity: this file's SHA-256 in ``snapshot`` (resolved at start)

    @property
    def restorable(self) -> bool:
        return self.model_dir is not None


@dataclass(frozen=True)
class Vantage:
    name: str
    proxy: str | None = None  # an HTTP(S) proxy URL the probes go through; None: from this host


@dataclass(frozen=True)
class FailoverConfig:
    spec: Spec
    regions: tuple[RegionConfig, ...]
    interval: float
    timeout: float
    state_dir: Path
    actuator: Actuator
    validate_level: int = 3
    promote_timeout: float = 600.0  # restore + the region reporting the right model, at most
    validate_check: str | None = None  # level 4: module:function, given the restored copy
    ledger: tuple[LedgerTarget, ...] = ()  # where decisions are recorded
    vantages: tuple[Vantage, ...] = (Vantage("here"),)
    quorum: int = 1  # vantage points that must see a region healthy

    def region(self, name: str) -> RegionConfig:
        return next(r for r in self.regions if r.name == name)


def password_of(what: str, env: str | None, file: Path | None) -> str:
    """The password from ``file`` or the variable ``env``; UsageError if neither gives one."""
    if file is not None:
        return api.read_password_file(str(file)).decode()
    if env is not None and env in os.environ:
        return os.environ[env]
    raise UsageError(f"no password for the repository of {what}",
                     hint="set password_env (and that variable) or password_file in its table of regions.toml")


def _ledger(doc: Any, regions: tuple[RegionConfig, ...], path: Path) -> tuple[LedgerTarget, ...]:
    if doc is None:
        seen: dict[str, LedgerTarget] = {}
        for r in regions:
            if r.repository is not None and r.repository not in seen:
                seen[r.repository] = LedgerTarget(r.repository, partial(
                    password_of, f"region {r.name}", r.password_env, r.password_file))
        return tuple(seen.values())
    if not isinstance(doc, dict) or "repository" not in doc or set(doc) - _LEDGER:
        raise ConfigFileError(f"{path}: [ledger] needs repository and knows only {', '.join(sorted(_LEDGER))}")
    repo = str(doc["repository"])
    if "://" not in repo:
        repo = str((path.parent / repo).resolve())
    env = str(doc["password_env"]) if "password_env" in doc else None
    file = (path.parent / str(doc["password_file"])).resolve() if "password_file" in doc else None
    return (LedgerTarget(repo, partial(password_of, "[ledger]", env, file)),)


def _vantages(doc: Any, f: dict[str, Any], path: Path) -> tuple[tuple[Vantage, ...], int]:
    if doc is None:
        if "quorum" in f:
            raise ConfigFileError(f"{path}: quorum without [[vantage]] points", hint="add [[vantage]] tables or"
                                  " remove quorum")
        return (Vantage("here"),), 1
    if not isinstance(doc, list) or not doc or not all(isinstance(v, dict) and "name" in v and not set(v) - _VANTAGE
                                                     for v in doc):
        raise ConfigFileError(f"{path}: each [[vantage]] needs a name and knows only name and proxy",
                              hint='e.g. [[vantage]] name = "us-east" proxy = "http://prober.us-east:3128"')
    out = tuple(Vantage(str(v["name"]), str(v["proxy"]) if "proxy" in v else None) for v in doc)
    if len({v.name for v in out}) != len(out):
        raise ConfigFileError(f"{path}: two [[vantage]] points have the same name")
    bad = [v.proxy for v in out if v.proxy is not None and not v.proxy.startswith(("http://", "https://"))]
    if bad:
        raise ConfigFileError(f"{path}: [[vantage]] proxy {bad[0]!r} is not an http(s) URL")
    quorum = f.get("quorum", len(out) // 2 + 1)
    if isinstance(quorum, bool) or not isinstance(quorum, int) or not 1 <= quorum <= len(out):
        raise ConfigFileError(f"{path}: quorum = {quorum!r} is not a number of vantage points from 1 to {len(out)}")
    return out, quorum


def _seconds(value: Any, key: str, path: Path) -> float:
    try:
        return api.parse_interval(str(value)).total_seconds()
    except UsageError as exc:
        raise ConfigFileError(f"{path}: {key} = {value!r}: {exc.message}", hint=exc.hint) from None


def _int(value: Any, key: str, path: Path, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigFileError(f"{path}: {key} = {value!r} is not a whole number of at least {low}")
    return value


def _check_identity(name: str, r: dict[str, Any], sha: str | None, path: Path) -> None:
    """model_dir needs repository and snapshot (what to restore); repository and snapshot
    without model_dir name the expected model by ``expected_file``; the controller must know
    the identity (expected_sha256, or expected_file) of a region it restores into."""
    where = f"{path}: [regions.{name}]"
    given = [k for k in _RESTORE if k in r]
    if "model_dir" in r and len(given) != len(_RESTORE):
        raise ConfigFileError(f"{where} restore-before-promote needs all of model_dir, repository and snapshot"
                              f" (it has {', '.join(given)})")
    if "expected_file" in r and sha is not None:
        raise ConfigFileError(f"{where} give expected_sha256 or expected_file, not both")
    if "expected_file" in r and not {"repository", "snapshot"} <= set(r):
        raise ConfigFileError(f"{where} expected_file names a file of a snapshot: it needs repository and snapshot")
    if given and "model_dir" not in r and "expected_file" not in r:
        raise ConfigFileError(f"{where} repository and snapshot serve a restore (model_dir) or the expected model"
                              f" (expected_file); it has {', '.join(given)} only")
    if "model_dir" in r and sha is None and "expected_file" not in r:
        raise ConfigFileError(f"{where} a region the controller restores into needs expected_sha256 or"
                              " expected_file (to know when the right model is served)")


def _region(name: str, r: Any, path: Path) -> RegionConfig:
    if not isinstance(r, dict) or "health_url" not in r or set(r) - _REGION:
        raise ConfigFileError(f"{path}: [regions.{name}] needs health_url and knows only {', '.join(sorted(_REGION))}",
                              hint='e.g. health_url = "http://10.0.0.1:8080/health"')
    url = str(r["health_url"])
    if not url.startswith(("http://", "https://")):
        raise ConfigFileError(f"{path}: [regions.{name}] health_url {url!r} is not an http(s) URL")
    codes = r.get("healthy_status")
    if codes is not None and (not isinstance(codes, list) or not codes or not all(
            isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes)):
        raise ConfigFileError(f"{path}: [regions.{name}] healthy_status = {codes!r} is not a list of HTTP status"
                              " codes", hint="e.g. healthy_status = [200, 204]")
    sha = r.get("expected_sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ConfigFileError(f"{path}: [regions.{name}] expected_sha256 is not a SHA-256 (64 hex digits)")
    _check_identity(name, r, sha, path)
    base = path.parent
    repo = str(r["repository"]) if "repository" in r else None
    if repo is not None and "://" not in repo:
        repo = str((base / repo).resolve())
    return RegionConfig(name, url, _int(r.get("priority", 1), f"regions.{name}.priority", path),
                        _int(r.get("weight", 100), f"regions.{name}.weight", path, 0), sha,
                        (base / str(r["model_dir"])).resolve() if "model_dir" in r else None, repo,
                        str(r["snapshot"]) if "snapshot" in r else None,
                        str(r["password_env"]) if "password_env" in r else None,
                        (base / str(r["password_file"])).resolve() if "password_file" in r else None,
                        str(r["route53_value"]) if "route53_value" in r else None,
                        tuple(codes) if codes is not None else None,
                        str(r["expected_file"]).strip("/") if "expected_file" in r else None)


def _actuator(a: Any, regions: tuple[RegionConfig, ...], path: Path) -> Actuator:
    if not isinstance(a, dict) or set(a) - _ACTUATOR:
        raise ConfigFileError(f"{path}: [actuator] is missing or has unknown keys",
                              hint=f'e.g. [actuator] path = "routing.json"; known keys: {", ".join(sorted(_ACTUATOR))}')
    kind = a.get("kind", "weights-file")
    if kind == "weights-file":
        reload = a.get("reload", [])
        if "path" not in a or not isinstance(reload, list) or not all(isinstance(x, str) for x in reload):
            raise ConfigFileError(f"{path}: [actuator] weights-file needs a path (and reload, if given, is a command"
                                  " as a list of strings)", hint='e.g. path = "routing.json"')
        return WeightsFile((path.parent / str(a["path"])).resolve(), tuple(reload))
    if kind == "route53":
        missing = [k for k in ("hosted_zone_id", "record_name") if k not in a]
        missing += [f"regions.{r.name}.route53_value" for r in regions if r.route53_value is None]
        if missing:
            raise ConfigFileError(f"{path}: the route53 actuator needs {', '.join(missing)}")
        return Route53Weighted(str(a["hosted_zone_id"]), str(a["record_name"]), str(a.get("record_type", "CNAME")),
                               _int(a.get("ttl", 60), "actuator.ttl", path),
                               {r.name: str(r.route53_value) for r in regions}, a.get("endpoint"))
    raise ConfigFileError(f"{path}: [actuator] kind = {kind!r} is not weights-file or route53")


def load_config(path: Path) -> FailoverConfig:
    """Read and check ``path``; ConfigFileError (exit 7) naming what is wrong."""
    doc = api.read_toml_file(path, "failover configuration",
                             "write one (docs/FAILOVER.md has an example) and pass it with --config")
    f = doc.get("failover", {})
    if not isinstance(f, dict) or set(f) - _FAILOVER:
        raise ConfigFileError(f"{path}: unknown key(s) in [failover]: {', '.join(sorted(set(f) - _FAILOVER))}",
                              hint=f"known keys: {', '.join(sorted(_FAILOVER))}")
    regions = tuple(_region(n, r, path) for n, r in (doc.get("regions") or {}).items())
    if len(regions) < 2:
        raise ConfigFileError(f"{path} names {len(regions)} region(s); failover needs at least two",
                              hint="add [regions.NAME] tables with health_url, priority and weight")
    actuator = _actuator(doc.get("actuator"), regions, path)
    promote = bool(f.get("promote_restore", False))
    if promote and not any(r.restorable for r in regions):
        raise ConfigFileError(f"{path}: promote_restore = true but no region has model_dir, repository and snapshot",
                              hint="give the standbys a model_dir to restore into")
    spec = Spec(tuple(RegionSpec(r.name, r.priority, r.weight, r.expected_sha256, r.restorable) for r in regions),
                _int(f.get("failure_threshold", 3), "failure_threshold", path),
                _int(f.get("success_threshold", 2), "success_threshold", path),
                _seconds(f.get("min_dwell", "5min"), "min_dwell", path),
                _seconds(f.get("max_dwell", "1h"), "max_dwell", path),
                _seconds(f.get("backoff_window", "1h"), "backoff_window", path), bool(f.get("manual_failback", False)),
                promote)
    level = _int(f.get("validate_level", 3), "validate_level", path)
    check = f.get("validate_check")
    if level > 4 or (level == 4) != isinstance(check, str):
        raise ConfigFileError(f"{path}: validate_level = {level}, validate_check = {check!r}: levels are 1 integrity,"
                              " 2 format, 3 structure, 4 your check (validate_check = \"module:function\", only"
                              " with level 4)")
    base = path.parent
    return FailoverConfig(spec, regions, _seconds(f.get("interval", "10s"), "interval", path),
                          _seconds(f.get("timeout", "2s"), "timeout", path),
                          (base / str(f.get("state_dir", "failover"))).resolve(), actuator, level,
                          _seconds(f.get("promote_timeout", "10min"), "promote_timeout", path), check,
                          _ledger(doc.get("ledger"), regions, path), *_vantages(doc.get("vantage"), f, path))


def _identity(r: RegionConfig) -> str:
    assert r.repository is not None and r.snapshot is not None and r.expected_file is not None
    repo = api.Repository.open(r.repository, password_of(f"region {r.name}", r.password_env, r.password_file))
    snap = repo.find_snapshot(r.snapshot)
    want = f"{os.path.basename(snap.paths[0].rstrip('/'))}/{r.expected_file}" if len(snap.paths) == 1 else ""
    found = [n.sha256 for n in repo.ls(snap.id, want) if want and n.path == os.fsencode(want) and n.type == "file"]
    if not found or found[0] is None:
        raise UsageError(f"region {r.name}: snapshot {snap.short_id} ({r.snapshot}) holds no file {r.expected_file!r}"
                         " in its source directory", hint="expected_file is a path inside model_dir, e.g."
                         ' "model.safetensors"; `weightvault ls SNAPSHOT` shows what the snapshot holds')
    return str(found[0])


def resolve_identities(cfg: FailoverConfig) -> FailoverConfig:
    """The configuration with every ``expected_file`` turned into its SHA-256 in the region's
    snapshot (read from the snapshot's manifest: no data is restored). WeightvaultError naming
    the region if its repository cannot be opened or the file is not there; regions that give
    ``expected_sha256`` need no repository at start."""
    regions = tuple(replace(r, expected_sha256=_identity(r)) if r.expected_file and not r.expected_sha256 else r
                    for r in cfg.regions)
    spec = replace(cfg.spec, regions=tuple(replace(rs, expected=r.expected_sha256)
                                           for rs, r in zip(cfg.spec.regions, regions, strict=True)))
    return replace(cfg, regions=regions, spec=spec)
