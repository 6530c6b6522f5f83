"""``weightvault ui``: the web dashboard on 127.0.0.1 for the repositories of ``-r`` or the
policy file, opened with the user's own password (docs/DASHBOARD.md)."""

from __future__ import annotations

import getpass
import os

import click
from click.core import ParameterSource

from weightvault import api
from weightvault.cli.common import (
    Globals,
    load_policy_file,
    now_option,
    open_repository,
    parse_now,
    pass_globals,
    policy_option,
)
from weightvault.errors import UsageError, WeightvaultError

__all__ = ["ui"]

# ``weightvault.web`` (Starlette, Jinja2, uvicorn) is imported when the command runs.


def _repositories(g: Globals, spec: api.PolicySpec | None,
                  fleet: api.Fleet | None) -> tuple[dict[str, api.Repository], api.Fleet | None]:
    if g.repo is not None or spec is None or not spec.repositories:
        repo = open_repository(g)
        name = os.path.basename(repo.location.rstrip("/")) or "repository"
        return {name: repo}, fleet
    assert fleet is not None
    repos: dict[str, api.Repository] = {}
    for name in spec.repositories:
        try:
            repos[name] = fleet[name]
        except WeightvaultError as exc:  # shown, not fatal: the others are still worth seeing
            click.echo(f"warning: repository {name} of the policy cannot be opened: {exc.message}", err=True)
    if not repos:
        raise UsageError("no repository of the policy could be opened", hint="check the warnings above")
    return repos, fleet


@click.command()
@policy_option
@now_option
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Where to listen (loopback only; port 0: a free one).")
@click.option("--read-only", is_flag=True, help="Only show: no backup, restore, drill or verify from the page.")
@click.option("--open", "open_browser", is_flag=True, help="Open the link in this machine's web browser.")
@click.pass_context
@pass_globals
def ui(g: Globals, ctx: click.Context, policy_path: str, now: str | None, listen: str, read_only: bool,
       open_browser: bool) -> None:
    """Serve the dashboard (overview, runs, snapshot browser with tensors and checkpoint diffs,
    storage, activity, and backup / restore / drill / verify from the page) on 127.0.0.1 and print
    its link, which holds a one-time token. Shows the repository of -r (or the default one), else
    every repository of the policy file; the policy's RPOs colour the overview."""
    from weightvault.web.auth import Sessions
    from weightvault.web.run import new_start_token, serve_ui
    from weightvault.web.site import Site

    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:9898")
    explicit = ctx.parent is not None and ctx.get_parameter_source("policy_path") not in (
        ParameterSource.DEFAULT, None)
    spec = load_policy_file(policy_path) if explicit or os.path.exists(os.path.expanduser(policy_path)) else None
    fleet = api.Fleet(spec, g.storage) if spec is not None else None
    repos, fleet = _repositories(g, spec, fleet)
    token = new_start_token()
    sessions = Sessions(token, user=getpass.getuser(), role="read" if read_only else "admin")
    clock = parse_now(now)
    site = Site(repos, sessions, policy=spec, fleet=fleet, now=(lambda: clock) if clock is not None else None)
    serve_ui(site, token, host=host.strip("[]") or "127.0.0.1",
             port=int(port), open_browser=open_browser)
