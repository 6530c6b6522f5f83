"""``policy suggest``: a policy file from the training stage and the model size.

Stages: *initial* (early training: the run changes fast and crashes often, so frequent backups
and short, dense retention), *middle* (steady training: fewer, spread-out restore points),
*final* (converging and release: rarer backups, long retention and retention locks). The larger
the model, the longer the interval: above 100 GB every weight and optimizer interval, and the RPO,
are multiplied by 1.5 (a backup of a large checkpoint takes longer and costs more to keep).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from datetime import timedelta
from typing import Any

from weightvault.errors import UsageError
from weightvault.policy.defaults import DEFAULT_CLASSES
from weightvault.policy.spec import parse_interval

__all__ = ["LARGE_MODEL_BYTES", "STAGES", "parse_size", "suggest_policy"]

LARGE_MODEL_BYTES = 100 * 10**9
STAGES = ("initial", "middle", "final")

_STAGE: dict[str, dict[str, Any]] = {
    "initial": {
        "rpo": "1h",
        "weights": {"every": "30min", "keep_last": 10, "keep_within": "1d", "keep_daily": 7},
        "optimizer": {"every": "30min", "keep_last": 3},
    },
    "middle": {
        "rpo": "4h",
        "weights": {"every": "2h", "keep_last": 5, "keep_daily": 7, "keep_weekly": 4},
        "optimizer": {"every": "2h", "keep_last": 2},
    },
    "final": {
        "rpo": "12h",
        "weights": {"every": "6h", "keep_last": 5, "keep_daily": 14, "keep_weekly": 8, "keep_monthly": 12,
                    "keep_yearly": 3, "lock_for": "90d"},
        "optimizer": {"every": "6h", "keep_last": 1},
    },
}
_UNITS = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}
_PARAMS = {"k": 10**3, "m": 10**6, "b": 10**9, "t": 10**12}  # parameter counts: 7B, 350M, 1.3T
BYTES_PER_PARAM = 2  # a parameter count is sized as its BF16/F16 weights
_SIZE_HINT = "give a size (120GB, 7.5GiB, 800MB) or a parameter count (7B, 350M: sized at 2 bytes each)"


def parse_size(text: str) -> int:
    """'120GB', '7.5 GiB', '800MB', '1TB' -> bytes (SI for GB, binary for GiB); '7B', '350M',
    '1.3T' -> a parameter count, sized as BF16 weights (2 bytes each). A bare number is refused:
    bytes or parameters, it cannot tell."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip().lower())
    if m is None or float(m.group(1)) <= 0:
        raise UsageError(f"cannot read model size {text!r}", hint=_SIZE_HINT)
    value, unit = float(m.group(1)), m.group(2)
    if unit in _UNITS:
        return int(value * _UNITS[unit])
    if unit in _PARAMS:
        return int(value * _PARAMS[unit] * BYTES_PER_PARAM)
    what = "a bare number" if not unit else f"unit {unit!r}"
    raise UsageError(f"cannot read model size {text!r}: {what} is neither a size nor a parameter count",
                     hint=_SIZE_HINT)


def source_name(paths: list[str]) -> str:
    """The source's name in a suggested policy: the first path's directory name (letters, digits,
    ``_`` and ``-`` kept; what ``restore --source NAME`` and the ``source=`` tag use), else "run"."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "-", os.path.basename(paths[0].rstrip("/")) if paths else "").strip("-")
    return base or "run"


def _interval_text(d: timedelta) -> str:
    minutes = round(d.total_seconds() / 60)
    if minutes % (24 * 60) == 0:
        return f"{minutes // (24 * 60)}d"
    if minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}min"


def _scaled(text: str, factor: float) -> str:
    return _interval_text(parse_interval(text) * factor)


def suggest_policy(stage: str, model_bytes: int, *, repository: str, paths: list[str]) -> str:
    """A complete, valid policy file (TOML) for one run directory."""
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}", hint=f"use one of {', '.join(STAGES)}")
    factor = 1.5 if model_bytes > LARGE_MODEL_BYTES else 1.0
    s = _STAGE[stage]
    classes = tomllib.loads(DEFAULT_CLASSES)["classes"]
    for name in ("weights", "optimizer"):
        keep = {k: v for k, v in classes[name].items() if k in ("globs", "tiers")}
        keep.update(s[name])
        keep["every"] = _scaled(keep["every"], factor)
        classes[name] = keep
    size = f"{model_bytes / 10**9:.1f} GB"
    why = ("above 100 GB: weight and optimizer intervals and the RPO x1.5" if factor > 1
           else "up to 100 GB: base intervals")
    lines = [
        f"# weightvault policy suggested for stage {stage!r}, model size {size} ({why}).",
        "# Review it, then run `weightvault policy apply --policy FILE` from cron or a systemd timer.",
        "version = 1",
        "",
        "[settings]",
        f"rpo = {json.dumps(_scaled(s['rpo'], factor))}",
        'prune_every = "7d"',
        "",
        "[repositories.local]",
        f"url = {json.dumps(repository)}",
        'tier = "hot"',
        'site = "local"',
        "",
        f"[sources.{source_name(paths)}]",
        f"paths = {json.dumps(paths)}",
        'repository = "local"',
        "",
    ]
    for name, table in classes.items():
        lines.append(f"[classes.{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)
