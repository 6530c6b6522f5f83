"""``restore --thaw``: before restoring, request the data packs an offline storage class keeps
(S3 GLACIER, DEEP_ARCHIVE) and wait for them, or stop with what was requested and when to come
back. Running the same command again picks up where it left off: the store remembers the
requests (``ops/thaw.py``)."""

from __future__ import annotations

import time

import click

from weightvault import api
from weightvault.cli.output import human_size
from weightvault.errors import ColdDataError

__all__ = ["thaw_until_ready"]


def _say(rep: api.ThawReport, quiet: bool) -> None:
    if quiet:
        return
    click.echo(f"thaw {rep.snapshot[:8]}: {rep.packs} data pack(s): {rep.online} online, {rep.restoring} being"
               f" restored, {rep.requested} requested now ({human_size(rep.bytes_requested)}, about"
               f" ${rep.cost_usd:.2f} at the {rep.tier} tier)", err=True)


def thaw_until_ready(repo: api.Repository, snapshot: str, includes: list[str], *, days: int, tier: str,
                     timeout: float, poll: float, quiet: bool) -> api.ThawReport:
    """Thaw, then poll every ``poll`` seconds until every pack is online or ``timeout`` seconds
    have passed; ColdDataError (exit 25) naming what is pending if they are not all online."""
    deadline = time.monotonic() + timeout
    rep = repo.thaw(snapshot, includes=includes or None, days=days, tier=tier)
    _say(rep, quiet)
    while not rep.ready and time.monotonic() + poll <= deadline:
        time.sleep(poll)
        rep = repo.thaw(snapshot, includes=includes or None, days=days, tier=tier)
        _say(rep, quiet)
    if rep.ready:
        return rep
    raise ColdDataError(
        f"{rep.packs - rep.online} of {rep.packs} data pack(s) ({human_size(rep.bytes_offline)}) are still offline:"
        f" their restore is requested (typical at the {tier} tier: {rep.typical_wait})",
        hint="run the same command again later: it asks only for what is not on its way and restores once all"
        " is online (or wait here with --restore-timeout, e.g. 12h)")
