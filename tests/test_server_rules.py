"""The repository server's pieces without a process: the role rules, maintenance windows, the audit
chain, users and tokens, the login limiter, the configuration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightvault.backends.base import FileType
from weightvault.errors import ConfigFileError, UsageError
from weightvault.server.audit import AuditLog
from weightvault.server.config import load_config
from weightvault.server.guard import Guard
from weightvault.server.rules import ROLES, Op, decide
from weightvault.server.users import UserStore, parse_role_grants
from weightvault.server.windows import BreakGlass, open_window, parse_window

BERLIN = "Europe/Berlin"


# -- rules ---------------------------------------------------------------------------------------
@given(role=st.sampled_from(ROLES), op=st.sampled_from(list(Op)), ftype=st.sampled_from(list(FileType)),
       own=st.booleans())
def test_roles_are_ordered_and_append_never_changes_what_others_stored(role: str, op: Op, ftype: FileType,
                                                                      own: bool) -> None:
    v = decide(role, op, None if op in (Op.INIT, Op.CLEAN, Op.SPACE) else ftype, own_lock=own)
    for higher in ROLES[ROLES.index(role) + 1:]:  # every right of a role is a right of those above it
        if v.allowed:
            assert decide(higher, op, None if op in (Op.INIT, Op.CLEAN, Op.SPACE) else ftype, own_lock=own).allowed
    if role in ("read", "append") and op in (Op.OVERWRITE, Op.DELETE):
        assert v.allowed is (ftype is FileType.LOCK and own)
    if v.allowed and op in (Op.OVERWRITE, Op.DELETE):
        assert v.risky is (ftype is not FileType.LOCK)
    if not v.allowed:
        assert v.rule and role in v.rule


def test_read_role_reads_everything_and_writes_only_its_locks_and_ledger_records() -> None:
    for ftype in FileType:
        assert all(decide("read", op, ftype).allowed for op in (Op.LIST, Op.STAT, Op.READ))
        assert decide("read", Op.CREATE, ftype).allowed is (ftype in (FileType.LOCK, FileType.LEDGER))
        assert not any(decide("read", op, ftype).allowed for op in (Op.OVERWRITE, Op.DELETE))
    assert not decide("maintain", Op.INIT, None).allowed and decide("admin", Op.INIT, None).allowed
    assert not decide("append", Op.CLEAN, None).allowed and decide("maintain", Op.CLEAN, None).allowed
    assert not decide("maintain", Op.DELETE, FileType.KEY).allowed
    assert not decide("maintain", Op.CREATE, FileType.KEY).allowed
    assert not decide("nobody", Op.READ, FileType.PACK).allowed


# -- windows -------------------------------------------------------------------------------------
def _at(text: str, zone: str = BERLIN) -> datetime:
    from zoneinfo import ZoneInfo

    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone))


@pytest.mark.parametrize("when, inside", [
    ("2026-12-01T09:00", True),   # Tuesday, the first minute
    ("2026-12-01T17:59", True),
    ("2026-12-01T18:00", False),  # the end is not inside
    ("2026-12-01T08:59", False),
    ("2026-12-05T12:00", False),  # Saturday
    ("2026-03-30T09:30", True),   # the Monday after the switch to summer time: still local time
])
def test_weekday_window_in_local_time(when: str, inside: bool) -> None:
    w = parse_window("Mon-Fri 09:00-18:00 Europe/Berlin")
    assert w.contains(_at(when)) is inside
    assert w.contains(_at(when).astimezone(UTC)) is inside  # the zone of the clock does not matter


def test_window_past_midnight_and_day_lists() -> None:
    w = parse_window("Fri 22:00-02:00 UTC")
    assert w.contains(_at("2026-12-04T23:00", "UTC"))       # Friday night
    assert w.contains(_at("2026-12-05T01:59", "UTC"))       # Saturday morning, from Friday's window
    assert not w.contains(_at("2026-12-05T22:30", "UTC"))   # Saturday night is not Friday
    assert not w.contains(_at("2026-12-04T01:00", "UTC"))   # Friday morning belongs to Thursday
    lst = parse_window("Mon,Wed-Thu 00:00-24:00 UTC")
    assert [lst.contains(_at(f"2026-11-{d}T12:00", "UTC")) for d in range(30, 31)] == [True]  # Monday
    assert lst.contains(_at("2026-12-03T23:59", "UTC")) and not lst.contains(_at("2026-12-01T12:00", "UTC"))
    assert parse_window("daily 10:00-11:00 UTC").contains(_at("2026-12-06T10:30", "UTC"))


@pytest.mark.parametrize("bad", ["Mon-Fri 09:00 Europe/Berlin", "Funday 09:00-10:00 UTC", "Mon 25:00-26:00 UTC",
                                 "Mon 09:00-10:00 Mars/Olympus", "Mon 09:00-09:00 UTC"])
def test_bad_windows_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigFileError, match="maintenance window"):
        parse_window(bad)


def test_break_glass_opens_a_window_that_expires(tmp_path: Path) -> None:
    windows = (parse_window("Sat 03:00-04:00 UTC"),)
    tuesday = _at("2026-12-01T12:00", "UTC")
    assert open_window(windows, tmp_path, tuesday) is None
    assert open_window((), tmp_path, tuesday) == "always"
    BreakGlass.open(tmp_path, 30, "alice", "restore drill cleanup", now=tuesday)
    opened = open_window(windows, tmp_path, tuesday + timedelta(minutes=29))
    assert opened is not None and "break-glass" in opened and "alice" in opened
    assert open_window(windows, tmp_path, tuesday + timedelta(minutes=31)) is None
    (tmp_path / "break-glass.json").write_text("{not json")
    assert open_window(windows, tmp_path, tuesday) is None  # a damaged file opens nothing


# -- audit ---------------------------------------------------------------------------------------
def _log(tmp_path: Path, n: int) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append(user=f"u{i % 3}", addr="127.0.0.1", repo="r", op="put", type="data", name=f"{i:016x}",
                   bytes=i, status=201, result="ok", reason=None)
    return log


def test_audit_chain_verifies_and_survives_a_second_writer(tmp_path: Path) -> None:
    log = _log(tmp_path, 5)
    other = AuditLog(log.path)  # another process appending (serve break-glass)
    other.append(user="admin", addr="local", op="break-glass", result="ok")
    log.append(user="u0", addr="127.0.0.1", op="read", result="ok")
    n, head, problems = log.verify()
    assert (n, problems) == (7, []) and head == list(log.records())[-1]["hash"]
    assert [r["seq"] for r in log.records()] == list(range(1, 8))


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "insert", "garbage"])
def test_audit_tampering_is_detected_at_its_line(tmp_path: Path, tamper: str) -> None:
    log = _log(tmp_path, 6)
    lines = log.path.read_text().splitlines()
    if tamper == "edit":
        rec = json.loads(lines[2])
        rec["result"] = "refused"
        lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    elif tamper == "delete":
        del lines[2]
    elif tamper == "swap":
        lines[2], lines[3] = lines[3], lines[2]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    else:
        lines[2] = "rm -rf /"
    log.path.write_text("\n".join(lines) + "\n")
    _, _, problems = log.verify()
    assert problems and problems[0].line == 3


# -- users, tokens, logins -----------------------------------------------------------------------
def test_tokens_passwords_and_roles(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "users.json")
    store.add("trainer@node-3", {"runs": "append", "*": "read"}, "pw")
    token = store.update("trainer@node-3", new_token=True)
    assert token is not None and token.startswith("wvt_")
    assert token not in (tmp_path / "users.json").read_text()  # only its hash is stored
    assert (tmp_path / "users.json").stat().st_mode & 0o777 == 0o600
    u = store.check_token(token)
    assert u is not None and u.role_for("runs") == "append" and u.role_for("other") == "read"
    assert store.check_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.check_password("trainer@node-3", "pw") is not None
    assert store.check_password("trainer@node-3", "wrong") is None
    assert store.check_password("nobody", "pw") is None
    other = UserStore(tmp_path / "users.json")  # the CLI, changing the file under a running server
    other.update("trainer@node-3", revoke_tokens=True, password="new")
    assert store.check_token(token) is None and store.check_password("trainer@node-3", "pw") is None
    with pytest.raises(UsageError, match="already exists"):
        store.add("trainer@node-3", {}, None)
    with pytest.raises(UsageError, match="invalid user name"):
        store.add("../evil", {}, None)
    with pytest.raises(UsageError, match="REPOSITORY=ROLE"):
        parse_role_grants(("runs=owner",))


def test_guard_limits_failures_per_address_and_per_user(tmp_path: Path) -> None:
    import base64

    store = UserStore(tmp_path / "users.json")
    store.add("a", {"*": "read"}, "secret")
    guard = Guard(store, limit=2)

    def basic(user: str, pw: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()

    assert guard.authenticate(basic("a", "secret"), "10.0.0.1").user is not None
    assert [guard.authenticate(basic("a", "x"), "10.0.0.1").status for _ in range(3)] == [401, 401, 429]
    assert guard.authenticate(basic("a", "secret"), "10.0.0.2").status == 429  # the user is blocked anywhere
    assert guard.authenticate(None, "10.0.0.3").status == 401
    assert guard.authenticate("Digest abc", "10.0.0.3").status == 401


# -- configuration -------------------------------------------------------------------------------
def test_config_relative_paths_windows_and_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "server.toml"
    cfg.write_text('[server]\nlisten = "127.0.0.1:0"\nroot = "repos"\nmax_object_size = "64MiB"\n'
                   'maintenance_windows = ["Mon-Fri 09:00-18:00 Europe/Berlin"]\n'
                   '[repositories.prod]\nlocation = "elsewhere/prod"\nquota = "1GiB"\n')
    c = load_config(cfg)
    assert c.root == tmp_path / "repos" and c.max_object_size == 64 << 20 and len(c.windows) == 1
    assert c.repository("prod") is not None and c.repository("prod").location == str(tmp_path / "elsewhere/prod")  # type: ignore[union-attr]
    assert c.repository("prod").quota == 1 << 30  # type: ignore[union-attr]
    assert c.repository("runs").location == str(tmp_path / "repos" / "runs")  # type: ignore[union-attr]
    assert c.repository("../etc") is None and c.repository("UPPER") is None
    assert c.snapshot_rate == 120 and c.private_role is None  # the defaults
    cfg.write_text('[server]\nroot = "r"\nsnapshot_rate = "2/min"\nprivate_repos = "append"\n')
    assert load_config(cfg).snapshot_rate == 120 and load_config(cfg).private_role == "append"
    cfg.write_text('[server]\nroot = "r"\nsnapshot_rate = "off"\n')
    assert load_config(cfg).snapshot_rate is None
    for text, match in [('[server]\nroot = "r"\nlisten = "nope"\n', "HOST:PORT"),
                        ('[server]\nlisten = "127.0.0.1:1"\n', "serves no repository"),
                        ('[server]\nroot = "r"\ntls_cert = "c.pem"\n', "go together"),
                        ('[server]\nroot = "r"\nmaintenance_windows = ["whenever"]\n', "maintenance window"),
                        ('[server]\nroot = "r"\nroots = "typo"\n', "unknown key"),
                        ('[server]\nroot = "r"\nsnapshot_rate = "lots"\n', "not a rate"),
                        ('[server]\nroot = "r"\nsnapshot_rate = true\n', "not a rate"),
                        ('[server]\nroot = "r"\nprivate_repos = "owner"\n', "not a role")]:
        cfg.write_text(text)
        with pytest.raises(ConfigFileError, match=match):
            load_config(cfg)


@settings(max_examples=100)
@given(when=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)),
       start=st.integers(0, 24 * 60 - 1), length=st.integers(1, 24 * 60 - 1),
       zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]))
def test_a_daily_window_and_its_complement_hold_every_moment_exactly_once(when: datetime, start: int, length: int,
                                                                         zone: str) -> None:
    end = (start + length) % (24 * 60)
    a, b = f"{start // 60:02d}:{start % 60:02d}", f"{end // 60:02d}:{end % 60:02d}"
    w, rest = parse_window(f"daily {a}-{b} {zone}"), parse_window(f"daily {b}-{a} {zone}")
    t = when.replace(tzinfo=UTC)
    assert w.contains(t) != rest.contains(t)
