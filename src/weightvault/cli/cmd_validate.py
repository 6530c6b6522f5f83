"""``weightvault validate``: model validation of a restored or live copy of a snapshot."""

from __future__ import annotations

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import display, echo_json, model_summary, report_json
from weightvault.errors import ValidationFailedError

__all__ = ["validate"]


@click.command()
@click.argument("snapshot")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--level", type=click.IntRange(1, 4), default=3, show_default=True,
              help="1 integrity (SHA-256), 2 format (files parse, bounds hold), 3 structure (tensor names,"
              " shapes, dtypes as backed up), 4 function (--check).")
@click.option("--check", metavar="MODULE:FUNCTION",
              help="Level 4: your check, given the restored directory (e.g. a forward pass within a tolerance).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_globals
def validate(g: Globals, snapshot: str, directory: str, level: int, check: str | None, as_json: bool) -> None:
    """Validate DIRECTORY (a restored or live copy of SNAPSHOT's source path) against the snapshot,
    up to LEVEL. Never executes code from the files (no unpickling). Exit 9 if any file fails."""
    report = open_repository(g).validate(snapshot, directory, level=level, check=check)
    if as_json:
        echo_json(report_json(report))
    elif not g.quiet:
        for f in report.files:
            for p in f.problems:
                click.echo(f"FAIL {f.path}: {p}")
            for w in f.warnings:
                click.echo(f"warning: {f.path}: {w}", err=True)
        for p in report.check_problems:
            click.echo(f"FAIL {report.check}: {p}")
        click.echo(f"{display(report.root)}: {len(report.files)} file(s) validated at level {level}"
                   f" ({model_summary(report)}): " + ("ok" if report.ok else f"{len(report.failed)} failed"))
    if not report.ok:
        raise ValidationFailedError(f"validation against {snapshot} failed: {len(report.failed)} file(s)"
                                    + (", the check" if report.check_problems else ""))
