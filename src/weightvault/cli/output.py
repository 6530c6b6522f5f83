"""Output helpers: human sizes and times, terminal-safe text, aligned tables, JSON, node documents.

Human output escapes control characters and undecodable bytes so a crafted file name cannot drive
the terminal. JSON output is ASCII, one document per command, with stable keys; a path that is not
valid UTF-8 is given as ``path`` (undecodable bytes shown as ``\\xNN``) plus ``path_b64`` (exact bytes).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from weightvault import api
from weightvault.errors import WeightvaultError

__all__ = [
    "display",
    "display_lines",
    "echo_json",
    "human_size",
    "human_time",
    "mode_string",
    "node_json",
    "path_fields",
    "print_table",
]


def human_size(n: float) -> str:
    """1536 -> '1.5 KiB'; bytes below 1 KiB are exact."""
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        n /= 1024
        if n < 1024 or unit == "PiB":
            break
    return f"{n:.1f} {unit}"


def human_time(value: str | int) -> str:
    """An ISO 8601 string or nanoseconds since the epoch, as local 'YYYY-MM-DD HH:MM:SS'."""
    t = datetime.fromisoformat(value) if isinstance(value, str) else datetime.fromtimestamp(value / 1e9, UTC)
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def display(value: str | bytes) -> str:
    """Text safe to print: undecodable bytes as \\xNN, control characters escaped."""
    raw = os.fsencode(value) if isinstance(value, str) else value
    text = _text(raw)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def display_lines(text: str) -> str:
    """Like ``display`` but keeps line breaks (multi-line messages)."""
    return "\n".join(display(line) for line in text.split("\n"))


def path_fields(raw: bytes, key: str = "path") -> dict[str, str]:
    """``{key: text}``, plus ``{key}_b64`` with the exact bytes when they are not valid UTF-8."""
    out = {key: _text(raw)}
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        out[f"{key}_b64"] = base64.b64encode(raw).decode("ascii")
    return out


def node_json(n: api.Node) -> dict[str, Any]:
    """The stable JSON form of a snapshot entry (``ls --json``)."""
    d: dict[str, Any] = path_fields(n.path)
    d.update(
        type=n.type,
        mode=n.mode,
        size=n.size,
        mtime=datetime.fromtimestamp(n.mtime_ns / 1e9, UTC).isoformat(),
        mtime_ns=n.mtime_ns,
        sha256=n.sha256,
    )
    if n.type == "symlink" and n.target is not None:
        d.update(path_fields(n.target, "target"))
    return d


def mode_string(n: api.Node) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(n.type, stat.S_IFREG)
    return stat.filemode(kind | n.mode)


def echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> None:
    """Columns padded to the widest cell; column indices in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    click.echo(line(headers))
    click.echo("  ".join("-" * w for w in widths))
    for row in rows:
        click.echo(line(row))


def group_json(g: api.Group) -> dict[str, Any]:
    """A sharded-checkpoint group as JSON: id, world size, state, ranks present and missing."""
    return {
        "id": g.id,
        "world_size": g.world_size,
        "complete": g.complete,
        "status": g.status(),
        "ranks": {str(r): s.id for r, s in sorted(g.ranks.items())},
        "missing_ranks": g.missing,
        "snapshot": g.merged.id if g.merged is not None else None,
    }


def prune_json(res: api.PruneResult) -> dict[str, Any]:
    return dataclasses.asdict(res)


def prune_lines(res: api.PruneResult) -> list[str]:
    """A human summary of a prune (or its dry run)."""
    would = "would " if res.dry_run else ""
    lines = [
        f"{res.snapshots} snapshot(s) need {res.live_blobs} blobs; the repository holds {res.packs} packs,"
        f" {human_size(res.pack_bytes)}",
    ]
    if res.dry_run:
        lines.append(f"would condemn {res.condemned_packs} pack(s), repacking {res.repacked_blobs} blobs"
                     f" from {res.repacked_packs} of them")
    else:
        if res.repacked_packs:
            lines.append(f"repacked {res.repacked_blobs} blobs from {res.repacked_packs} pack(s)"
                         f" into {human_size(res.repack_written_bytes)} of new packs")
        lines.append(f"deleted {res.deleted_packs} pack(s), {human_size(res.deleted_bytes)}")
        if res.rescued_packs:
            lines.append(f"kept {res.rescued_packs} condemned pack(s) that a concurrent backup came to use")
    if res.unused_bytes_kept:
        lines.append(f"{human_size(res.unused_bytes_kept)} unused left in packs below the repack threshold")
    if res.pending_packs:
        lines.append(
            f"{res.pending_packs} condemned pack(s), {human_size(res.pending_bytes)}, {would}wait for clients"
            " that were running when they were condemned; the next prune deletes them once those have finished"
        )
        lines += [f"  waiting on {w}" for w in res.waiting_on]
    return lines


def report_run(run: api.PolicyRun, quiet: bool, as_json: bool) -> None:
    """Print a policy run (one line per step: outcome, step, repository, detail; or JSON), then
    raise if any step failed (exit 1: the others still ran, and the journal has them all)."""
    if as_json:
        echo_json({"ok": run.ok, "dry_run": run.dry_run, "steps": [dict(s.__dict__) for s in run.steps]})
    elif not quiet:
        for s in run.steps:
            mark = "waits" if s.deferred else "would" if run.dry_run else ("ok" if s.ok else "FAILED")
            click.echo(f"{mark:6} {s.step:11} {s.repository:12} {s.detail}")
        if not run.steps:
            click.echo("nothing is due")
    failed = [s for s in run.steps if not s.ok]
    if failed:
        raise WeightvaultError(f"{len(failed)} of {len(run.steps)} step(s) failed (first: {failed[0].step}"
                               f" {failed[0].repository}: {failed[0].detail})",
                               hint="the lines above and the journal say what failed; the other steps ran")


def report_json(report: api.ValidationReport) -> dict[str, Any]:
    return {"snapshot": report.snapshot, "level": report.level, "ok": report.ok, "check": report.check,
            "check_problems": report.check_problems, "root": report.root,
            "files": [{"path": f.path, "format": f.format, "passed": f.passed, "problems": f.problems,
                       "warnings": f.warnings} for f in report.files]}


def model_summary(report: api.ValidationReport) -> str:
    """'2 safetensors, 1 gguf parsed' (model files by the format their content was parsed as)."""
    counts: dict[str, int] = {}
    for f in report.files:
        if f.format and f.passed >= 2:
            counts[f.format] = counts.get(f.format, 0) + 1
    parsed = ", ".join(f"{n} {fmt}" for fmt, n in sorted(counts.items()))
    return f"{parsed} parsed" if parsed else "no model file parsed"
