"""``weightvault agent`` and ``weightvault watch``: the long-running agent (docs/AGENT.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from weightvault import api
from weightvault.cli.common import Globals, load_policy_file, pass_globals, policy_option
from weightvault.errors import UsageError

__all__ = ["agent", "watch"]

# ``weightvault.agent`` (the watcher, the metrics server, prometheus_client, http.server) is
# imported by these two commands when they run, not by every command at start-up (~0.1 s).


def _seconds(text: str, what: str) -> float:
    try:
        return api.parse_interval(text).total_seconds()
    except UsageError as exc:
        raise UsageError(f"{what}: {exc.message}", hint=exc.hint) from None


def _common(f: click.decorators.FC) -> click.decorators.FC:
    for opt in reversed([
        click.option("--once", is_flag=True, help="Run what is due once (every root scanned, the queue drained) and"
                     " exit: for cron or a systemd timer. Exit 1 if a step failed."),
        click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
                     help="One line per event, as text or as a JSON object."),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
                     help="The agent's state (lock, what was handed off; default $XDG_STATE_HOME/weightvault/agent)."
                     " One agent per state directory."),
        click.option("--rescan", default="60s", show_default=True, metavar="INTERVAL",
                     help="Full rescan of watched directories this often (events catch the rest)."),
        click.option("--metrics-listen", metavar="HOST:PORT",
                     help="Serve /metrics (Prometheus) and /healthz here, e.g. 127.0.0.1:9464 (another address needs"
                     " $WEIGHTVAULT_METRICS_TOKEN, sent as a bearer token)."),
        click.option("--metrics-textfile", type=click.Path(file_okay=False, path_type=Path), metavar="DIR",
                     help="Write DIR/weightvault.prom for node-exporter's textfile collector after every turn."),
    ]):
        f = opt(f)
    return f


@click.command()
@policy_option
@click.option("--interval", default="30s", show_default=True, metavar="INTERVAL",
              help="How often the policy's due steps are looked for.")
@_common
@pass_globals
def agent(g: Globals, policy_path: str, interval: str, once: bool, log_format: str, state_dir: Path | None,
          rescan: str, metrics_listen: str | None, metrics_textfile: Path | None) -> None:
    """Run the policy without cron: every due step (backups, retention, prune, copies, tier moves,
    drills) on schedule, the upload queue drained, and each complete checkpoint under the sources
    marked `watch = true` backed up as it appears. SIGTERM/SIGINT stop at a safe point, SIGHUP
    reloads the policy (an invalid one is refused, the old one kept)."""
    load_policy_file(policy_path)  # a clear error now rather than in the log
    from weightvault.agent.events import EventLog
    from weightvault.agent.loop import Agent, AgentOptions

    opts = AgentOptions(policy=Path(policy_path).expanduser(), once=once, interval=_seconds(interval, "--interval"),
                        rescan=_seconds(rescan, "--rescan"), state_dir=state_dir, storage=g.storage,
                        metrics_listen=metrics_listen, metrics_textfile=metrics_textfile)
    sys.exit(Agent(opts, EventLog(fmt=log_format)).run())


@click.command()
@click.argument("dirs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--tag", "tags", multiple=True, metavar="K=V", help="Add this tag to every snapshot (repeatable).")
@click.option("--quiet-for", "quiet", default="30s", show_default=True, metavar="INTERVAL",
              help="Where a checkpoint's format cannot tell it is complete: no file modified for this long.")
@_common
@pass_globals
def watch(g: Globals, dirs: tuple[Path, ...], tags: tuple[str, ...], quiet: str, once: bool, log_format: str,
          state_dir: Path | None, rescan: str, metrics_listen: str | None, metrics_textfile: Path | None) -> None:
    """Back up each complete checkpoint that appears under DIRS (Hugging Face, DCP, Lightning,
    sharded safetensors, or any directory or file named with a step) into the repository (-r),
    one snapshot each, tagged run=<DIR's name> and step=N, without a policy."""
    repo = g.repo or str(api.default_repository_path())
    from weightvault.agent.events import EventLog
    from weightvault.agent.loop import Agent, AgentOptions

    opts = AgentOptions(watch=[d.expanduser() for d in dirs], repository=repo,
                        password_file=os.path.abspath(g.password_file) if g.password_file else None,
                        tags=tags, quiet=_seconds(quiet, "--quiet-for"), once=once, rescan=_seconds(rescan, "--rescan"),
                        state_dir=state_dir, storage=g.storage, metrics_listen=metrics_listen,
                        metrics_textfile=metrics_textfile)
    sys.exit(Agent(opts, EventLog(fmt=log_format)).run())
