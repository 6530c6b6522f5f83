"""``weightvault serve``: the repository server, its users, its audit log and break-glass windows
(docs/SERVER.md)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from weightvault import api
from weightvault.errors import CheckFailedError, UsageError

__all__ = ["serve"]

# ``weightvault.server`` (Starlette, uvicorn, argon2 hashing) is imported when a serve command runs.


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", envvar="WEIGHTVAULT_SERVER_CONFIG", metavar="FILE",
              type=click.Path(dir_okay=False, path_type=Path),
              help="The server's TOML configuration (default: $WEIGHTVAULT_SERVER_CONFIG).")
@click.option("--listen", metavar="HOST:PORT", help="Listen here instead of the config's listen (port 0: any free).")
@click.option("--insecure-http", is_flag=True,
              help="Allow plain HTTP off loopback (only behind a TLS-terminating proxy).")
@click.pass_context
def serve(ctx: click.Context, config_path: Path | None, listen: str | None, insecure_http: bool) -> None:
    """Serve repositories over HTTPS to clients using -r https://HOST:PORT/NAME, with users and
    roles (read, append, maintain, admin) enforced on every request, maintenance windows for deletes
    and overwrites, an audit log and /metrics. Without a subcommand, runs the server until SIGTERM."""
    import dataclasses

    from weightvault.server.config import load_config

    ctx.ensure_object(dict)
    ctx.obj["serve_config"] = config_path
    if ctx.invoked_subcommand is not None:
        return
    from weightvault.server.run import serve as run_server

    cfg = load_config(_required(config_path))
    if listen is not None:
        host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise UsageError(f"--listen {listen!r} is not HOST:PORT", hint="e.g. --listen 127.0.0.1:8443")
        cfg = dataclasses.replace(cfg, host=host.strip("[]") or "127.0.0.1", port=int(port))
    run_server(cfg, insecure_http=insecure_http)


def _required(path: Path | None) -> Path:
    if path is None:
        raise UsageError("no server configuration given", hint="pass --config FILE (before the subcommand) or set"
                         " $WEIGHTVAULT_SERVER_CONFIG; docs/SERVER.md has an example")
    return path


def _load(ctx: click.Context) -> Any:
    from weightvault.server.config import load_config

    obj = ctx.find_object(dict)
    assert obj is not None
    return load_config(_required(obj["serve_config"]))


def _store(ctx: click.Context) -> Any:
    from weightvault.server.users import UserStore

    return UserStore(_load(ctx).state_dir / "users.json")


def _password(stdin: bool, what: str) -> str:
    if stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise UsageError(f"no {what} on standard input", hint="pipe one line, e.g. from a secrets manager")
        return line
    value = click.prompt(what.capitalize(), hide_input=True, confirmation_prompt=True)
    return str(value)


@serve.group()
def user() -> None:
    """Manage the server's users (roles per repository, passwords, API tokens)."""


_role_opt = click.option("--role", "roles", multiple=True, metavar="REPO=ROLE", required=True,
                         help="A role on a repository (or * for every one): read, append, maintain or admin."
                         " Repeatable.")


@user.command("add")
@click.argument("name")
@_role_opt
@click.option("--password", "with_password", is_flag=True, help="Give the user a password (prompted) for basic auth.")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
def user_add(ctx: click.Context, name: str, roles: tuple[str, ...], with_password: bool, password_stdin: bool) -> None:
    """Add a user. Without --password, an API token is made and printed once (store it now)."""
    from weightvault.server.users import check_user_name, parse_role_grants

    check_user_name(name)
    grants = parse_role_grants(roles)
    store = _store(ctx)
    password = _password(password_stdin, "password") if with_password or password_stdin else None
    store.add(name, grants, password)
    click.echo(f"added user {name}: " + ", ".join(f"{r}={g}" for r, g in sorted(grants.items())), err=True)
    if password is None:
        click.echo(store.update(name, new_token=True))
        click.echo("this token is shown once: give it to the client as WEIGHTVAULT_SERVER_TOKEN", err=True)


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def user_list(ctx: click.Context, as_json: bool) -> None:
    """List users, their roles and how many tokens each has (never a secret)."""
    users = _store(ctx).users()
    rows = [{"name": u.name, "roles": u.roles, "password": bool(u.password),
             "tokens": [{"id": t["id"], "created": t.get("created")} for t in u.tokens]} for u in users]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        roles = ", ".join(f"{k}={v}" for k, v in sorted(r["roles"].items()))
        click.echo(f"{r['name']:<24} {roles:<32} password={'yes' if r['password'] else 'no'}"
                   f" tokens={len(r['tokens'])}")


@user.command("remove")
@click.argument("name")
@click.pass_context
def user_remove(ctx: click.Context, name: str) -> None:
    """Remove a user (their tokens stop working at the next request)."""
    _store(ctx).remove(name)
    click.echo(f"removed user {name}", err=True)


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@click.pass_context
def user_passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a user's password."""
    store = _store(ctx)
    if store.get(name) is None:
        raise UsageError(f"no user {name!r}", hint="'weightvault serve user list' shows the users")
    store.update(name, password=_password(password_stdin, "new password"))
    click.echo(f"password of {name} changed", err=True)


@user.command("token")
@click.argument("name")
@click.option("--revoke-all", is_flag=True, help="Revoke every token of the user first.")
@click.pass_context
def user_token(ctx: click.Context, name: str, revoke_all: bool) -> None:
    """Make a new API token for a user and print it once."""
    click.echo(_store(ctx).update(name, new_token=True, revoke_tokens=revoke_all))
    click.echo("this token is shown once: give it to the client as WEIGHTVAULT_SERVER_TOKEN", err=True)


@user.command("role")
@click.argument("name")
@_role_opt
@click.pass_context
def user_role(ctx: click.Context, name: str, roles: tuple[str, ...]) -> None:
    """Replace a user's roles."""
    from weightvault.server.users import parse_role_grants

    _store(ctx).update(name, roles=parse_role_grants(roles))
    click.echo(f"roles of {name} set", err=True)


@serve.group(invoke_without_command=True)
@click.option("--since", metavar="TIME", help="Only records at or after TIME (ISO 8601, or an interval: 2h, 1d).")
@click.option("--user", "user_name", metavar="NAME", help="Only this user's requests.")
@click.option("--result", type=click.Choice(["ok", "refused", "error"]), help="Only requests with this result.")
@click.option("--json", "as_json", is_flag=True, help="One JSON record per line.")
@click.pass_context
def audit(ctx: click.Context, since: str | None, user_name: str | None, result: str | None, as_json: bool) -> None:
    """Show the server's audit log (every request: who, from where, what, the result and why)."""
    if ctx.invoked_subcommand is not None:
        return
    from weightvault.server.audit import AuditLog

    cutoff = _since(since)
    log = AuditLog(_load(ctx).state_dir / "audit.jsonl")
    for rec in log.records():
        if (cutoff and str(rec.get("time", "")) < cutoff) or (user_name and rec.get("user") != user_name) \
                or (result and rec.get("result") != result):
            continue
        if as_json:
            click.echo(json.dumps(rec, sort_keys=True))
            continue
        obj = f"{rec.get('type')}/{rec.get('name')}" if rec.get("name") else (rec.get("type") or "")
        why = f"  ({rec['reason']})" if rec.get("reason") else ""
        click.echo(f"{rec.get('time', '')[:19]} {rec.get('user') or '-':<16} {rec.get('addr', '-'):<15}"
                   f" {rec.get('repo') or '-':<12} {rec.get('op'):<8} {obj:<28} {rec.get('status')}"
                   f" {rec.get('result')}{why}")


def _since(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return (datetime.now(UTC) - api.parse_interval(text)).isoformat(timespec="microseconds")
    except UsageError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is neither a time nor an interval",
                         hint="e.g. --since 2026-12-01T09:00:00+00:00 or --since 2h") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC).isoformat(timespec="microseconds")


@audit.command("verify")
@click.pass_context
def audit_verify(ctx: click.Context) -> None:
    """Check the audit log's hash chain (exit 5 naming the first damaged record)."""
    from weightvault.server.audit import AuditLog

    n, head, problems = AuditLog(_load(ctx).state_dir / "audit.jsonl").verify()
    for p in problems[:20]:
        click.echo(f"line {p.line}: {p.message}", err=True)
    if problems:
        raise CheckFailedError(f"the audit log is damaged: {len(problems)} problem(s) in {n} records",
                               hint="the first line named is where it was changed; keep the file for investigation")
    click.echo(f"{n} records, chain intact; head {head}")


@serve.command("break-glass")
@click.option("--for", "duration", default="30min", show_default=True, metavar="INTERVAL",
              help="How long the window stays open.")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
@click.option("--by", "by", required=True, metavar="NAME", help="Who opens it (an admin user of the server).")
@click.pass_context
def break_glass(ctx: click.Context, duration: str, reason: str, by: str) -> None:
    """Open a one-off window for deletes and overwrites now, outside the maintenance windows. Run it
    on the server host; it is audited and closes by itself."""
    from weightvault.server.audit import AuditLog
    from weightvault.server.users import UserStore
    from weightvault.server.windows import BreakGlass

    cfg = _load(ctx)
    u = UserStore(cfg.state_dir / "users.json").get(by)
    if u is None or u.roles.get("*") != "admin":
        raise UsageError(f"{by!r} is not an admin of every repository on this server",
                         hint="--by names a user with the role *=admin (the window opens for every repository)")
    minutes = api.parse_interval(duration).total_seconds() / 60
    bg = BreakGlass.open(cfg.state_dir, minutes, by, reason)
    AuditLog(cfg.state_dir / "audit.jsonl").append(user=by, addr="local", repo=None, op="break-glass", type=None,
                                                   name=None, bytes=0, status=0, result="ok", reason=reason,
                                                   until=bg.until.isoformat(timespec="seconds"))
    click.echo(f"break-glass window open until {bg.until.isoformat(timespec='seconds')}")
