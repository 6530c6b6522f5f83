"""``weightvault policy suggest|check|apply``: declarative backup policies."""

from __future__ import annotations

import os
import socket

import click

from weightvault import api
from weightvault.cli.common import Globals, load_policy_file, now_option, parse_now, pass_globals, policy_option
from weightvault.cli.output import report_run
from weightvault.errors import ConfigFileError

__all__ = ["policy"]


@click.group()
def policy() -> None:
    """Policy files: suggest one, check one, apply one."""


@policy.command()
@click.option("--stage", type=click.Choice(["initial", "middle", "final"]), required=True,
              help="Training stage: initial (frequent, short retention), middle, final (long retention, locks).")
@click.option("--model-size", required=True, metavar="SIZE",
              help="Model size: bytes (120GB, 7.5GiB) or parameters (7B: 2 bytes each); above 100 GB intervals are"
              " 1.5 x longer.")
@click.option("--path", "paths", multiple=True, required=True, metavar="DIR",
              help="Run directory to protect (repeatable).")
@click.option("--repository", metavar="PATH|s3://...", help="Repository URL (default: the embedded default one).")
def suggest(stage: str, model_size: str, paths: tuple[str, ...], repository: str | None) -> None:
    """Print a policy file for a training run (review it, save it, then `policy apply`)."""
    click.echo(api.suggest_policy(stage, model_size, repository=repository,
                                  paths=[os.path.abspath(p) for p in paths]), nl=False)


@policy.command()
@policy_option
@click.option("--allow-missing", is_flag=True,
              help="Only warn about source paths that do not exist here (a host that mounts them later).")
def check(policy_path: str, allow_missing: bool) -> None:
    """Validate a policy file (exit 7 naming the line of the first problem, or a source path that
    does not exist on this machine)."""
    spec = load_policy_file(policy_path)
    here = socket.gethostname()
    missing = [(src.name, p) for src in spec.sources.values() if src.host in (None, here) for p in src.missing_paths()]
    for name, p in missing:
        click.echo(f"{'warning' if allow_missing else 'error'}: {spec.path}: sources.{name}.paths: {p} does not exist"
                   " on this machine", err=True)
    if missing and not allow_missing:
        raise ConfigFileError(f"{len(missing)} source path(s) do not exist: nothing there would be protected",
                              hint="fix the paths (a placeholder such as /path/to/run?), or pass --allow-missing"
                              " on a host that mounts them later")
    click.echo(f"{spec.path}: {len(spec.repositories)} repositories, {len(spec.sources)} sources, "
               f"{len(spec.classes)} data classes ({', '.join(c.name for c in spec.classes)})")


@policy.command()
@policy_option
@now_option
@click.option("--dry-run", "-n", is_flag=True, help="Show what is due; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@pass_globals
def apply(g: Globals, policy_path: str, now: str | None, dry_run: bool, as_json: bool) -> None:
    """Run what is due now: backups per source and data class, retention, prune, copies to
    replicas and tier moves. Each step is recorded in the journal; exit 1 if any step failed
    (the others still run). Meant for cron or a systemd timer."""
    spec = load_policy_file(policy_path)
    run = api.apply_policy(spec, now=parse_now(now), dry_run=dry_run, fleet=api.Fleet(spec, g.storage))
    report_run(run, g.quiet, as_json)


