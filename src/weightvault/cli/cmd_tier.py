"""``weightvault tier run``: move old snapshots down the storage tiers a policy defines."""

from __future__ import annotations

import click

from weightvault import api
from weightvault.cli.common import Globals, load_policy_file, now_option, parse_now, pass_globals, policy_option
from weightvault.cli.output import report_run

__all__ = ["tier"]


@click.group()
def tier() -> None:
    """Storage tiers (hot, warm, cold, archive) of the repositories in a policy."""


@tier.command("run")
@policy_option
@now_option
@click.option("--dry-run", "-n", is_flag=True, help="Show the moves; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as JSON.")
@pass_globals
def run_(g: Globals, policy_path: str, now: str | None, dry_run: bool, as_json: bool) -> None:
    """Snapshots older than their repository's tier age are copied to the next tier their data
    class passes through, verified there, then forgotten here; those whose class ends at this
    tier are forgotten. Nothing moves to an archive tier before a second site holds a copy."""
    spec = load_policy_file(policy_path)
    res = api.tier_run(spec, now=parse_now(now), dry_run=dry_run, fleet=api.Fleet(spec, g.storage))
    report_run(res, g.quiet, as_json)
