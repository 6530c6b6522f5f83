"""The policy file: named repositories (tier, site), sources, and data classes (TOML).

    version = 1
    [settings]                       # all optional
    rpo = "2h"                       # default recovery point objective of every source
    prune_every = "7d"               # prune a repository at most this often
    journal = "~/.local/state/weightvault/journal.jsonl"

    [repositories.hot]               # one table per named repository
    url = "/nvme/weightvault"        # a path or s3://bucket/prefix
    tier = "hot"                     # hot | warm | cold | archive
    site = "dc1"
    password_file = "/etc/weightvault/hot.pw"   # or password_env = "NAME"
    s3_endpoint = "http://minio:9000"           # optional
    storage_class = "DEEP_ARCHIVE"              # optional (s3://, az://): the class its data packs go in
    max_age = "7d"                   # optional: default by tier (hot 7d, warm 30d, cold 180d, archive never)

    [sources.exp42]
    paths = ["/runs/exp42"]
    repository = "hot"
    replicate_to = ["offsite"]       # optional: copied there by `policy apply`
    rpo = "1h"                       # optional, else settings.rpo
    tags = ["run=exp42"]             # optional, added to every snapshot
    classes = ["weights", "configs"] # optional, default all
    watch = true                     # optional: the agent backs up each complete checkpoint as it appears
    quiet = "30s"                    # optional (watched): no change this long where the format cannot tell

    [drills.weekly]                  # restore drills that `policy apply` runs when due
    repository = "hot"
    every = "7d"
    level = 3                        # 1 integrity, 2 format, 3 structure
    pick = "random"                  # or latest
    within = "30d"                   # optional: only snapshots this recent
    check = "mychecks:forward_pass"  # level 4: a function of yours, given the restored directory

    [classes.weights]                # ordered: a file belongs to the first class whose globs match it
    globs = ["*.safetensors", "*.pt"]
    every = "1h"                     # back up at most this often
    keep_last = 5                    # retention: keep_last/hourly/daily/weekly/monthly/yearly, keep_within
    keep_within = "2d"
    lock_for = "30d"                 # optional retention lock on each snapshot
    tiers = ["hot", "warm", "cold", "archive"]   # tiers its snapshots pass through, in order

Without ``[classes]`` the defaults for an ML run directory apply (``policy/defaults.py``).
``[checks.NAME]``, ``[windows.NAME]`` and ``[[notify]]`` tables: ``policy/agent_spec.py``.
Every error is a ConfigFileError naming the file and line.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from weightvault.backends.factory import AZURE_TIERS, S3_STORAGE_CLASSES
from weightvault.errors import ConfigFileError, UsageError
from weightvault.ops.retention import Policy as Retention
from weightvault.ops.retention import parse_duration
from weightvault.policy.defaults import DEFAULT_CLASSES

__all__ = [
    "TIERS",
    "TIER_MAX_AGE",
    "DataClass",
    "DrillSpec",
    "PolicySpec",
    "RepoSpec",
    "Settings",
    "SourceSpec",
    "load_policy",
    "parse_interval",
    "parse_policy",
]

TIERS = ("hot", "warm", "cold", "archive")
TIER_MAX_AGE: dict[str, timedelta | None] = {
    "hot": timedelta(days=7), "warm": timedelta(days=30), "cold": timedelta(days=180), "archive": None,
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_INTERVAL_UNITS = {"s": timedelta(seconds=1), "min": timedelta(minutes=1), "h": timedelta(hours=1),
                   "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_interval(text: str) -> timedelta:
    """'30s', '15min', '2h', '1d', '1w', '1h30min' -> timedelta (minutes are 'min': 'm' means
    months in retention durations); UsageError if malformed or zero."""
    t = text.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)(min|h|d|w|s)", t)
    if not parts or "".join(n + u for n, u in parts) != t:
        raise UsageError(f"cannot read interval {text!r}", hint="use e.g. 30s, 15min, 2h, 1d, 1w or 1h30min")
    total = sum((float(n) * _INTERVAL_UNITS[u] for n, u in parts), timedelta())
    if total <= timedelta():
        raise UsageError(f"interval {text!r} is zero")
    return total


@dataclass(frozen=True)
class Settings:
    rpo: timedelta = timedelta(hours=24)
    prune_every: timedelta = timedelta(days=7)
    journal: str | None = None


@dataclass(frozen=True)
class RepoSpec:
    name: str
    url: str
    tier: str = "hot"
    site: str = "local"
    password_file: str | None = None
    password_env: str | None = None
    s3_endpoint: str | None = None
    max_age: timedelta | None = None  # snapshots older than this move to the next tier (None: never)
    storage_class: str | None = None  # s3:// only: data packs go there (GLACIER, DEEP_ARCHIVE: restore --thaw)


@dataclass(frozen=True)
class DataClass:
    name: str
    globs: tuple[str, ...]
    every: timedelta
    retention: Retention
    lock_for: timedelta | None = None
    tiers: tuple[str, ...] = TIERS


@dataclass(frozen=True)
class SourceSpec:
    name: str
    paths: tuple[str, ...]
    repository: str
    replicate_to: tuple[str, ...] = ()
    rpo: timedelta | None = None
    tags: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()  # empty: every class
    host: str | None = None  # the machine that holds the paths: only snapshots made there count
    watch: bool = False  # the agent backs up each complete checkpoint under the paths as it appears
    quiet: timedelta = timedelta(seconds=30)  # watched: no change for this long, where the format cannot tell

    @property
    def abs_paths(self) -> list[str]:
        """The paths as a backup records them (``~`` expanded, absolute, sorted): a snapshot is of
        this source only if its ``paths`` are exactly these."""
        return sorted(os.path.abspath(os.path.expanduser(p)) for p in self.paths)

    def missing_paths(self) -> list[str]:
        """Those of ``abs_paths`` that do not exist on this machine."""
        return [p for p in self.abs_paths if not os.path.lexists(p)]


@dataclass(frozen=True)
class DrillSpec:
    name: str
    repository: str
    every: timedelta = timedelta(days=7)
    level: int = 3
    pick: str = "random"
    within: timedelta | None = None
    check: str | None = None  # level 4: module:function


@dataclass
class PolicySpec:
    settings: Settings = field(default_factory=Settings)
    repositories: dict[str, RepoSpec] = field(default_factory=dict)
    sources: dict[str, SourceSpec] = field(default_factory=dict)
    classes: list[DataClass] = field(default_factory=list)
    drills: dict[str, DrillSpec] = field(default_factory=dict)
    windows: dict[str, Any] = field(default_factory=dict)  # name -> agent_spec.WindowSpec
    checks: dict[str, Any] = field(default_factory=dict)  # name -> agent_spec.CheckSpec
    notify: list[Any] = field(default_factory=list)  # agent_spec.NotifySpec, in file order
    failover: str | None = None  # [failover] config: a regions.toml the agent's failover controller runs
    path: str = "<policy>"

    def cls(self, name: str) -> DataClass | None:
        return next((c for c in self.classes if c.name == name), None)

    def classes_of(self, source: SourceSpec) -> list[DataClass]:
        return [c for c in self.classes if not source.classes or c.name in source.classes]

    def excludes_for(self, dc: DataClass) -> list[str]:
        """Globs of the classes before ``dc``: a file belongs to the first class that matches it."""
        out: list[str] = []
        for c in self.classes:
            if c.name == dc.name:
                return out
            out += c.globs
        return out

    def rpo_of(self, source: SourceSpec) -> timedelta:
        return source.rpo or self.settings.rpo


class _Where:
    """Finds the line of a table or key in the TOML text, for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line(self, table: str, key: str | None = None) -> int:
        header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
        start = next((i for i, ln in enumerate(self.lines) if header.match(ln)), None)
        if start is None:
            return 1
        if key is None:
            return start + 1
        for i in range(start + 1, len(self.lines)):
            if re.match(r"^\s*\[", self.lines[i]):
                break
            if re.match(r"^\s*" + re.escape(key) + r"\s*=", self.lines[i]):
                return i + 1
        return start + 1

    def error(self, table: str, key: str | None, problem: str) -> ConfigFileError:
        where = f"{table}.{key}" if key else table
        return ConfigFileError(f"{self.path}, line {self.line(table, key)}: {where}: {problem}",
                               hint="fix the policy file; `weightvault policy check` validates it")


def load_policy(path: str | Path) -> PolicySpec:
    """Read and validate a policy file (ConfigFileError naming the line on any problem)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"no policy file at {p}",
                              hint="write one: `weightvault policy suggest --stage middle --model-size 7B"
                              f" --path RUN_DIR > {p}`, or pass --policy FILE") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigFileError(f"cannot read the policy file {p}: {exc}") from exc
    return parse_policy(text, str(p))


def parse_policy(text: str, path: str = "<policy>") -> PolicySpec:
    """Parse policy TOML text; see the module docstring."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}", hint="fix the syntax at the line named") from exc
    w = _Where(path, text)
    _only(w, "", doc, {"version", "settings", "repositories", "sources", "classes", "drills", "windows", "notify",
                       "checks", "failover"})
    if doc.get("version", 1) != 1:
        raise ConfigFileError(f"{path}, line {_top_line(w, 'version')}: version: only version 1 is known")
    spec = PolicySpec(path=path)
    spec.settings = _settings(w, _table(w, "", doc, "settings"))
    for name, raw in _table(w, "", doc, "repositories").items():
        spec.repositories[name] = _repo(w, name, raw)
    classes = _table(w, "", doc, "classes")
    if classes:
        spec.classes = [_class(w, name, raw) for name, raw in classes.items()]
    else:
        spec.classes = parse_policy(DEFAULT_CLASSES, "<default classes>").classes
    for name, raw in _table(w, "", doc, "sources").items():
        spec.sources[name] = _source(w, name, raw, spec)
    for name, raw in _table(w, "", doc, "drills").items():
        spec.drills[name] = _drill(w, name, raw, spec)
    from weightvault.policy import agent_spec  # its parsers use this module's helpers

    spec.windows = agent_spec.parse_windows(w, _table(w, "", doc, "windows"))
    spec.notify = agent_spec.parse_notify(w, doc.get("notify", []))
    spec.checks = agent_spec.parse_checks(w, _table(w, "", doc, "checks"), spec.repositories)
    fo = _table(w, "", doc, "failover")
    if fo:
        _only(w, "failover", fo, {"config"})
        config = _get(w, "failover", fo, "config", str, required=True)
        base = os.path.dirname(os.path.abspath(path)) if not path.startswith("<") else os.getcwd()
        spec.failover = os.path.join(base, os.path.expanduser(config))
    return spec


def _drill(w: _Where, name: str, raw: Any, spec: PolicySpec) -> DrillSpec:
    table = f"drills.{name}"
    _named_table(w, table, name, raw, {"repository", "every", "level", "pick", "within", "check"})
    repo = _get(w, table, raw, "repository", str, required=True)
    if repo not in spec.repositories:
        raise w.error(table, "repository", f"no repository named {repo!r} in [repositories]")
    level = _get(w, table, raw, "level", int)
    if level is not None and level not in (1, 2, 3, 4):
        raise w.error(table, "level", "must be 1 (integrity), 2 (format), 3 (structure) or 4 (function)")
    check = _get(w, table, raw, "check", str)
    if level == 4 and not check:
        raise w.error(table, "check", "level 4 needs check = \"module:function\"")
    pick = _get(w, table, raw, "pick", str) or "random"
    if pick not in ("latest", "random"):
        raise w.error(table, "pick", "must be latest or random")
    return DrillSpec(name, repo, _duration(w, table, raw, "every", interval=True) or timedelta(days=7),
                     level or 3, pick, _duration(w, table, raw, "within"), check)


def _top_line(w: _Where, key: str) -> int:
    return next((i + 1 for i, ln in enumerate(w.lines) if re.match(r"^\s*" + key + r"\s*=", ln)), 1)


def _table(w: _Where, where: str, doc: dict[str, Any], key: str) -> dict[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise w.error(where or key, key if where else None, "must be a table")
    return v


def _only(w: _Where, table: str, raw: dict[str, Any], allowed: set[str]) -> None:
    for k in raw:
        if k not in allowed:
            raise w.error(table or k, k if table else None, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _get(w: _Where, table: str, raw: dict[str, Any], key: str, kind: type, required: bool = False) -> Any:
    if key not in raw:
        if required:
            raise w.error(table, None, f"missing required key {key!r}")
        return None
    v = raw[key]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise w.error(table, key, "must be a whole number >= 0")
    if kind is list and not (isinstance(v, list) and all(isinstance(x, str) for x in v)):
        raise w.error(table, key, "must be a list of strings")
    if kind is str and not (isinstance(v, str) and v):
        raise w.error(table, key, "must be a non-empty string")
    if kind is bool and not isinstance(v, bool):
        raise w.error(table, key, "must be true or false")
    return v


def _duration(w: _Where, table: str, raw: dict[str, Any], key: str, interval: bool = False) -> timedelta | None:
    v = _get(w, table, raw, key, str)
    if v is None:
        return None
    try:
        return parse_interval(v) if interval else parse_duration(v)
    except UsageError as exc:
        raise w.error(table, key, f"{exc.message} ({exc.hint})") from None


def _name(w: _Where, table: str, name: str) -> None:
    if not _NAME.match(name):
        raise w.error(table, None, "names use letters, digits, '.', '_' and '-' (at most 64)")


def _named_table(w: _Where, table: str, name: str, raw: Any, allowed: set[str]) -> None:
    """``[kind.name]`` is a table with a valid name and only ``allowed`` keys."""
    if not isinstance(raw, dict):
        raise w.error(table, None, "must be a table")
    _name(w, table, name)
    _only(w, table, raw, allowed)


def _settings(w: _Where, raw: dict[str, Any]) -> Settings:
    _only(w, "settings", raw, {"rpo", "prune_every", "journal"})
    d = Settings()
    return Settings(
        rpo=_duration(w, "settings", raw, "rpo", interval=True) or d.rpo,
        prune_every=_duration(w, "settings", raw, "prune_every", interval=True) or d.prune_every,
        journal=_get(w, "settings", raw, "journal", str),
    )


def _repo(w: _Where, name: str, raw: Any) -> RepoSpec:
    table = f"repositories.{name}"
    _named_table(w, table, name, raw,
                 {"url", "tier", "site", "password_file", "password_env", "s3_endpoint", "max_age", "storage_class"})
    tier = _get(w, table, raw, "tier", str) or "hot"
    if tier not in TIERS:
        raise w.error(table, "tier", f"unknown tier {tier!r} (use {', '.join(TIERS)})")
    if "password_file" in raw and "password_env" in raw:
        raise w.error(table, "password_env", "give password_file or password_env, not both")
    max_age = _duration(w, table, raw, "max_age") if "max_age" in raw else TIER_MAX_AGE[tier]
    storage_class = _get(w, table, raw, "storage_class", str)
    if storage_class is not None:
        url = str(raw.get("url", ""))
        known = S3_STORAGE_CLASSES if url.startswith("s3://") else AZURE_TIERS if url.startswith("az://") else ()
        if not known:
            raise w.error(table, "storage_class", "a storage class needs an s3:// or az:// repository")
        if storage_class not in known:
            raise w.error(table, "storage_class", f"unknown storage class {storage_class!r} (use {', '.join(known)})")
    return RepoSpec(
        name=name, url=_get(w, table, raw, "url", str, required=True), tier=tier,
        site=_get(w, table, raw, "site", str) or "local", password_file=_get(w, table, raw, "password_file", str),
        password_env=_get(w, table, raw, "password_env", str), s3_endpoint=_get(w, table, raw, "s3_endpoint", str),
        max_age=max_age, storage_class=storage_class,
    )


_KEEP = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")


def _class(w: _Where, name: str, raw: Any) -> DataClass:
    table = f"classes.{name}"
    _named_table(w, table, name, raw, {"globs", "every", "keep_within", "keep_tags", "lock_for", "tiers", *_KEEP})
    globs = _get(w, table, raw, "globs", list, required=True)
    if not globs:
        raise w.error(table, "globs", "must name at least one glob")
    n = {k: int(_get(w, table, raw, k, int) or 0) for k in _KEEP}
    retention = Retention(n["keep_last"], n["keep_hourly"], n["keep_daily"], n["keep_weekly"], n["keep_monthly"],
                          n["keep_yearly"], _duration(w, table, raw, "keep_within"),
                          tuple(_get(w, table, raw, "keep_tags", list) or ()))
    if retention.empty():
        raise w.error(table, None, "has no keep rule (keep_last, keep_daily, ..., keep_within): it would keep nothing")
    tiers = tuple(_get(w, table, raw, "tiers", list) or TIERS)
    for t in tiers:
        if t not in TIERS:
            raise w.error(table, "tiers", f"unknown tier {t!r} (use {', '.join(TIERS)})")
    if list(tiers) != sorted(tiers, key=TIERS.index) or len(set(tiers)) != len(tiers):
        raise w.error(table, "tiers", f"tiers must go downwards without repeats ({' > '.join(TIERS)})")
    return DataClass(name, tuple(globs), _duration(w, table, raw, "every", interval=True) or timedelta(days=1),
                     retention, _duration(w, table, raw, "lock_for"), tiers)


def _source(w: _Where, name: str, raw: Any, spec: PolicySpec) -> SourceSpec:
    table = f"sources.{name}"
    _named_table(w, table, name, raw, {"paths", "repository", "replicate_to", "rpo", "tags", "classes", "host",
                                       "watch", "quiet"})
    paths = _get(w, table, raw, "paths", list, required=True)
    if not paths:
        raise w.error(table, "paths", "must name at least one path")
    repo = _get(w, table, raw, "repository", str, required=True)
    if repo not in spec.repositories:
        raise w.error(table, "repository", f"no repository named {repo!r} in [repositories]")
    replicas = tuple(_get(w, table, raw, "replicate_to", list) or ())
    for r in replicas:
        if r not in spec.repositories or r == repo:
            raise w.error(table, "replicate_to", f"{r!r} is not another repository named in [repositories]")
    classes = tuple(_get(w, table, raw, "classes", list) or ())
    for c in classes:
        if spec.cls(c) is None:
            raise w.error(table, "classes", f"no data class named {c!r}")
    quiet = _duration(w, table, raw, "quiet", interval=True)
    return SourceSpec(name, tuple(paths), repo, replicas, _duration(w, table, raw, "rpo", interval=True),
                      tuple(_get(w, table, raw, "tags", list) or ()), classes, _get(w, table, raw, "host", str),
                      bool(_get(w, table, raw, "watch", bool)), quiet or timedelta(seconds=30))
