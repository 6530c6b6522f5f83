"""``weightvault failover``: keep model serving routed to healthy regions (docs/FAILOVER.md)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import click

from weightvault.cli.output import echo_json, print_table
from weightvault.errors import UsageError

__all__ = ["failover"]


def _config_option(f: Any) -> Any:
    return click.option("--config", "config_path", required=True, envvar="WEIGHTVAULT_FAILOVER_CONFIG",
                        type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
                        help="The regions file (regions.toml; $WEIGHTVAULT_FAILOVER_CONFIG).")(f)


@click.group()
def failover() -> None:
    """Probe each region's model server, route traffic to the healthy ones (failover at once,
    failback damped), never to none, never to a region serving the wrong model."""


@failover.command("run")
@_config_option
@click.option("--rounds", type=click.IntRange(1), help="Stop after this many probe rounds (default: until stopped).")
def run(config_path: Path, rounds: int | None) -> None:
    """Run the controller until SIGTERM/SIGINT, one probe round every interval."""
    from weightvault.failover.config import load_config
    from weightvault.failover.controller import Controller

    ctl = Controller(load_config(config_path))

    def stop(signum: int, frame: Any) -> None:
        ctl.stopping.set()

    signal.signal(signal.SIGTERM, stop)
    click.echo(f"failover controller on {len(ctl.cfg.regions)} regions, routing {ctl.state.routing}", err=True)
    try:
        ctl.run(rounds)
    except KeyboardInterrupt:
        pass
    finally:
        ctl.close()


@failover.command("status")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the controller's state as JSON.")
def status(config_path: Path, as_json: bool) -> None:
    """The current routing, each region's health and last probe, and the latest events."""
    import json

    from weightvault.failover.config import load_config
    from weightvault.failover.controller import read_status

    cfg = load_config(config_path)
    doc = read_status(cfg)
    if doc is None:
        raise UsageError(f"the controller has not run yet ({cfg.state_dir / 'state.json'} does not exist)",
                         hint=f"start it: weightvault failover run --config {config_path}")
    events_path = cfg.state_dir / "events.jsonl"
    events = [json.loads(x) for x in events_path.read_text().splitlines()[-20:]] if events_path.exists() else []
    if as_json:
        echo_json({**doc, "events": events})
        return
    click.echo(f"routing: {', '.join(f'{k}={v}' for k, v in sorted(doc['routing'].items()))}"
               f" (as of {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(doc['time']))} UTC, round {doc['rounds']})")
    if doc.get("waiting"):
        click.echo(f"held back: {doc['waiting']}")
    if len(doc.get("vantages", ())) > 1:
        click.echo(f"probed from {', '.join(doc['vantages'])} (quorum {doc['quorum']})")
    click.echo("decisions recorded in the ledger of " + (", ".join(doc["ledger"]) if doc.get("ledger") else
                                                           "no repository (add [ledger] or a region repository)"))
    if doc.get("last_rto_s") is not None:
        click.echo(f"last RTO: {doc['last_rto_s']:.1f} s")
    print_table(["Region", "Health", "Fails", "Successes", "Last probe"],
                [[n, r["health"], r["fails"], r["successes"], r["last"]] for n, r in sorted(doc["regions"].items())])
    for e in events[-10:]:
        click.echo(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(e['time']))} {e['kind']}: {e['reason']}")


@failover.command("approve")
@_config_option
def approve(config_path: Path) -> None:
    """Let the next held-back failback happen (with manual_failback = true)."""
    from weightvault.failover.config import load_config
    from weightvault.paths import atomic_write

    cfg = load_config(config_path)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cfg.state_dir / "approve", b"approved\n")
    click.echo("approved: the next failback the controller holds back will happen at its next round", err=True)


@failover.command("drill")
@_config_option
@click.option("--region", "region", required=True, help="The standby to rehearse on.")
@click.option("--json", "as_json", is_flag=True, help="Print the drill's event as JSON.")
def drill(config_path: Path, region: str, as_json: bool) -> None:
    """Rehearse restore-before-promote on a standby without moving traffic: restore its snapshot
    into its model directory (validated, swapped in atomically), wait for it to serve that model,
    and record the RTO in the event log."""
    from dataclasses import asdict

    from weightvault.failover.config import load_config
    from weightvault.failover.controller import drill as run_drill

    event = run_drill(load_config(config_path), region)
    if as_json:
        echo_json(asdict(event))
    else:
        click.echo(f"drill of {region}: {event.reason}; RTO {float(event.evidence['rto_s']):.1f} s")
