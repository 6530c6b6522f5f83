"""``weightvault ledger``: the hash-chained record of operations; ``ledger verify`` checks the chain."""

from __future__ import annotations

import csv
import sys

import click

from weightvault.cli.common import Globals, open_repository, pass_globals
from weightvault.cli.output import echo_json, print_table
from weightvault.errors import IntegrityError

__all__ = ["ledger"]

OPS = ("backup", "restore", "verify", "drill", "copy", "forget", "prune", "repair", "repair-index", "failover",
       "failover-drill")
_COLUMNS = ("seq", "time", "op", "ok", "operator", "snapshots", "source", "target", "bytes", "duration_s", "detail")


@click.group(invoke_without_command=True)
@click.option("--since", metavar="TIME", help="Only records at or after TIME (ISO 8601, e.g. 2026-11-01).")
@click.option("--op", type=click.Choice(OPS), help="Only this operation.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Print the records as CSV.")
@click.pass_context
def ledger(ctx: click.Context, since: str | None, op: str | None, as_json: bool, as_csv: bool) -> None:
    """List the ledger: every backup, restore, verify, drill, copy, forget, prune and repair (also
    failed and interrupted ones), and what the failover controller decided, with time, operator,
    snapshots, paths, bytes, duration and outcome. Stored in the repository."""
    if ctx.invoked_subcommand is not None:
        return
    g = ctx.find_object(Globals)
    assert g is not None
    records = open_repository(g).ledger(since=since, op=op)
    if as_json:
        echo_json(records)
    elif as_csv:
        w = csv.writer(sys.stdout)
        w.writerow(_COLUMNS)
        for r in records:
            w.writerow([" ".join(r.get(c) or []) if c == "snapshots" else r.get(c, "") for c in _COLUMNS])
    else:
        rows = [[str(r["seq"]), r["time"][:19].replace("T", " "), r["op"], "ok" if r["ok"] else "FAILED",
                 r.get("operator", ""), " ".join(s[:8] for s in r.get("snapshots") or []), str(r.get("detail", ""))]
                for r in records]
        print_table(["#", "Time", "Op", "Result", "Operator", "Snapshots", "Detail"], rows)


@ledger.command("verify")
@pass_globals
def verify_(g: Globals) -> None:
    """Check the chain: every record readable, none missing, each chained onto the one before.
    Exit 4 if a record was deleted, edited or replaced."""
    res = open_repository(g).verify_ledger()
    for p in res.problems:
        click.echo(f"problem: {p}")
    if not g.quiet:
        state = "chain intact" if res.ok else f"{len(res.problems)} problem(s)"
        click.echo(f"ledger: {res.records} record(s), {state}")
    if not res.ok:
        raise IntegrityError("the ledger's chain is broken: records were deleted, edited or replaced",
                             hint="compare with a replica's ledger or an exported copy (`weightvault ledger --json`)")
