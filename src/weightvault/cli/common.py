"""Shared CLI plumbing: global options, choosing the repository and the password.

Repository: ``-r/--repo``, else ``$WEIGHTVAULT_REPO``, else the embedded default repository
(``api.default_repository_path()``), which ``init`` creates, ``backup`` creates on first use and every
other command requires (exit 10 when missing).

Password, first found wins: ``--password-file``, ``$WEIGHTVAULT_PASSWORD``, ``$WEIGHTVAULT_PASSWORD_FILE``,
the default repository's generated key file (default repository only), a hidden prompt when stdin is a
TTY. With none of them: UsageError (exit 2). New passwords (init, key add, key passwd) come from
``--new-password-file`` or a prompt asked twice; never from argv. Passwords are never printed.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import click

from weightvault import api
from weightvault.errors import RepositoryExistsError, RepositoryNotFoundError, UsageError, WrongPasswordError

__all__ = [
    "Globals",
    "announce_default_created",
    "create_repository",
    "new_password",
    "open_repository",
    "pass_globals",
    "supplied_password",
]

_PW_HINT = "set $WEIGHTVAULT_PASSWORD or $WEIGHTVAULT_PASSWORD_FILE, or use --password-file"


@dataclass
class Globals:
    """Options given before the command name."""

    repo: str | None
    password_file: str | None
    quiet: bool
    storage: api.StorageOptions = field(default_factory=api.StorageOptions)
    skip_unreadable: bool = False


pass_globals = click.make_pass_decorator(Globals)


def supplied_password(g: Globals) -> bytes | None:
    """The password from --password-file or the environment, or None if none was given."""
    if g.password_file:
        return api.read_password_file(g.password_file)
    env = os.environ.get("WEIGHTVAULT_PASSWORD")
    if env is not None:
        if not env:
            raise UsageError("$WEIGHTVAULT_PASSWORD is set but empty", hint=_PW_HINT)
        return os.fsencode(env)
    path = os.environ.get("WEIGHTVAULT_PASSWORD_FILE")
    if path:
        return api.read_password_file(path)
    return None


def _prompt(text: str, *, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise UsageError("no password given and stdin is not a terminal to ask for one", hint=_PW_HINT)
    value: str = click.prompt(text, hide_input=True, confirmation_prompt=confirm, err=True)
    if not value:
        raise UsageError("the password is empty")
    return value.encode("utf-8")


def new_password(new_password_file: str | None, what: str) -> bytes:
    """A new password: from ``new_password_file``, else prompted twice on a TTY."""
    if new_password_file:
        return api.read_password_file(new_password_file)
    if not sys.stdin.isatty():
        raise UsageError(
            f"no {what} given and stdin is not a terminal to ask for one",
            hint="use --new-password-file FILE (passwords are never taken from the command line)",
        )
    return _prompt(f"{what}", confirm=True)


def _explicit_exists(g: Globals, location: str) -> bool:
    return api.repository_exists(location, g.storage)


def storage_options(
    s3_endpoint: str | None, connections: int, limit_upload: str | None, limit_download: str | None,
    s3_object_lock: str | None = None, s3_storage_class: str | None = None,
) -> api.StorageOptions:
    """The global storage options, with rates parsed (UsageError naming the option if malformed)."""
    rates: dict[str, int | None] = {}
    for opt, value in (("--limit-upload", limit_upload), ("--limit-download", limit_download)):
        try:
            rates[opt] = api.parse_rate(value) if value else None
        except ValueError as exc:
            raise UsageError(f"{opt}: {exc}") from None
    return api.StorageOptions(s3_endpoint=s3_endpoint or None, connections=connections,
                              limit_upload=rates["--limit-upload"], limit_download=rates["--limit-download"],
                              s3_object_lock=s3_object_lock, s3_storage_class=s3_storage_class)


def open_repository(g: Globals, *, create_default: bool = False) -> api.Repository:
    """Open the selected repository; with ``create_default`` the default one is created if missing."""
    repo = _open_selected(g, create_default)
    repo.skip_unreadable = g.skip_unreadable
    return repo


def _open_selected(g: Globals, create_default: bool) -> api.Repository:
    if g.repo is not None:
        if not _explicit_exists(g, g.repo):
            raise RepositoryNotFoundError(
                f"no repository at {g.repo}", hint=f"create one with `weightvault -r {g.repo} init`"
            )
        pw = supplied_password(g)
        if pw is None and api.opens_without_password(g.repo, g.storage):
            return api.Repository.open(g.repo, None, storage=g.storage)  # through its KMS key
        if pw is None:
            pw = _prompt(f"password for repository {g.repo}", confirm=False)
        return api.Repository.open(g.repo, pw, storage=g.storage)
    path = api.default_repository_path()
    pw = supplied_password(g)
    if pw is None and (path / "config").exists() and not api.default_key_file().exists():
        keyfile = api.default_key_file()
        if not sys.stdin.isatty():
            raise WrongPasswordError(
                f"the default repository {path} is unlocked by the key file {keyfile}, which does not exist",
                hint=f"put your saved copy of the key file back at {keyfile}, or give the repository's password"
                " ($WEIGHTVAULT_PASSWORD, --password-file); without either the data cannot be decrypted")
        click.echo(f"note: the key file {keyfile} does not exist; asking for the password instead", err=True)
        pw = _prompt(f"password for the default repository {path}", confirm=False)
    res = api.open_or_create_default(pw, create=create_default)
    if res.created:
        announce_default_created(res)
    return res.repository


def create_repository(
    g: Globals, delta_max_depth: int | None = None, append_only: bool = False, kms: str | None = None
) -> tuple[api.Repository, bool]:
    """``init``: create the selected repository. Returns it and whether it is the default one.
    With ``kms`` a password is used only if one is supplied (never prompted for)."""
    for flag, given in (("--append-only", append_only), ("--kms", kms)):
        if given and g.repo is None:
            raise UsageError(f"{flag} needs an explicit repository", hint="use -r PATH or -r s3://BUCKET/PREFIX")
    if g.repo is not None:
        if _explicit_exists(g, g.repo):
            raise RepositoryExistsError(f"a repository already exists at {g.repo}")
        pw = supplied_password(g)
        if pw is None and kms is None:
            pw = _prompt(f"new password for repository {g.repo}", confirm=True)
        repo = api.Repository.init(g.repo, pw, delta_max_depth=delta_max_depth, storage=g.storage,
                                   append_only=append_only, kms=kms)
        return repo, False
    path = api.default_repository_path()
    if (path / "config").exists():
        raise RepositoryExistsError(
            f"the default repository already exists at {path}", hint="use -r PATH to create another one"
        )
    res = api.open_or_create_default(supplied_password(g), create=True, delta_max_depth=delta_max_depth)
    announce_default_created(res)
    return res.repository, True


def announce_default_created(res: api.DefaultRepository) -> None:
    """Tell the user, on stderr and whatever --quiet says, where the new default repository and its key are."""

    def say(line: str) -> None:
        click.echo(line, err=True)

    say(f"weightvault: created the default repository at {res.repository.location}")
    if res.key_file is not None:
        say(f"weightvault: its password was generated and saved in the key file {res.key_file} (mode 0600).")
        say("  That key file is the ONLY way to read these backups. Keep a copy of it somewhere safe,")
        say("  off this disk (a password manager or another machine): without it nothing can be restored.")
    elif api.default_key_file().exists():
        say(f"weightvault: it is protected by the password in the existing key file {api.default_key_file()}.")
        say("  Keep a copy of that file somewhere safe, off this disk: without it nothing can be restored.")
    else:
        say("weightvault: it is protected by the password you supplied; without it nothing can be restored.")


def percent(text: str, option: str) -> float:
    """'10%' or '10' -> 0.10; UsageError unless within 0..100."""
    try:
        value = float(text.strip().removesuffix("%"))
        if not 0 <= value <= 100:
            raise ValueError
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a percentage",
                         hint="give a number from 0 to 100, e.g. 10%") from None
    return value / 100


def policy_option(f: Any) -> Any:
    """``--policy FILE`` (``$WEIGHTVAULT_POLICY``, default ``$XDG_CONFIG_HOME/weightvault/policy.toml``)."""
    return click.option("--policy", "policy_path", envvar="WEIGHTVAULT_POLICY",
                        default=lambda: str(api.default_policy_file()), show_default="$XDG_CONFIG_HOME/weightvault/"
                        "policy.toml (~/.config/...)", metavar="FILE", help="The policy file ($WEIGHTVAULT_POLICY).")(f)


def now_option(f: Any) -> Any:
    return click.option("--now", metavar="TIME",
                        help="Act as if it were TIME (ISO 8601, UTC if no offset): to rehearse a schedule.")(f)


def parse_now(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"cannot parse time {text!r}", hint="use ISO 8601, e.g. 2026-12-01T06:00") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def load_policy_file(path: str) -> api.PolicySpec:
    return api.load_policy(os.path.expanduser(path))


def _other_password(g: Globals, from_password_file: str | None, location: str) -> bytes:
    """--from-password-file, $WEIGHTVAULT_FROM_PASSWORD(_FILE), else the destination's password
    (or a prompt on a terminal)."""
    if from_password_file:
        return api.read_password_file(from_password_file)
    env = os.environ.get("WEIGHTVAULT_FROM_PASSWORD")
    if env:
        return os.fsencode(env)
    path = os.environ.get("WEIGHTVAULT_FROM_PASSWORD_FILE")
    if path:
        return api.read_password_file(path)
    pw = supplied_password(g)
    if pw is not None:
        return pw
    if not sys.stdin.isatty():
        raise UsageError(
            f"no password given for the source repository {location}",
            hint="use --from-password-file, or set $WEIGHTVAULT_FROM_PASSWORD or $WEIGHTVAULT_FROM_PASSWORD_FILE",
        )
    value: str = click.prompt(f"password for the source repository {location}", hide_input=True, err=True)
    return value.encode("utf-8")


def named_repository(g: Globals, name: str | None) -> api.Repository | None:
    """A repository named in the policy file ($WEIGHTVAULT_POLICY or the default one), if ``name``
    is such a name and not an existing repository path."""
    if not name or "/" in name or ":" in name or api.repository_exists(name, g.storage):
        return None
    path = os.path.expanduser(os.environ.get("WEIGHTVAULT_POLICY") or str(api.default_policy_file()))
    if not os.path.exists(path):
        return None
    spec = load_policy_file(path)
    return api.Fleet(spec, g.storage)[name] if name in spec.repositories else None


def open_other_repository(g: Globals, location: str, password_file: str | None, option: str) -> api.Repository:
    """A second repository (copy's source, check's replica): a name from the policy file, or a
    path or URL opened with ``password_file``, $WEIGHTVAULT_FROM_PASSWORD(_FILE) or this one's password."""
    named = named_repository(g, location)
    if named is not None:
        return named
    if not api.repository_exists(location, g.storage):
        raise RepositoryNotFoundError(f"no repository at {location}",
                                      hint=f"check the {option} location (a path, s3:// URL or policy name)")
    return api.Repository.open(location, _other_password(g, password_file, location), storage=g.storage)
