"""The failover controller end to end: three real model servers on 127.0.0.1 (each loads a
safetensors file and reports its SHA-256 on /health), a real ``weightvault failover run``
process, faults injected into the servers, and the routing file and event log checked."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import FAST_KDF, PASSWORD
from weightvault.api import Repository


@dataclass
class Region:
    name: str
    url: str
    mode: Path
    proc: subprocess.Popen[str]

    def set(self, mode: str) -> None:
        tmp = self.mode.with_suffix(".tmp")
        tmp.write_text(mode + "\n")
        os.replace(tmp, self.mode)


def _wait(what: str, check: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait until ``check()`` holds (a deadline for a broken build, not a speed requirement)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def regions(tmp_path: Path) -> Iterator[tuple[dict[str, Region], str]]:
    weights = tmp_path / "model.safetensors"
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, str(weights))
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    out: dict[str, Region] = {}
    try:
        for name in ("eu", "us", "ap"):
            mode = tmp_path / f"{name}.mode"
            mode.write_text("ok\n")
            proc = subprocess.Popen([sys.executable, "-m", "weightvault.testing.model_server", "--weights",
                                     str(weights), "--mode-file", str(mode)], stdout=subprocess.PIPE, text=True)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("listening on "), line
            out[name] = Region(name, line.split()[-1], mode, proc)
        yield out, sha
    finally:
        for r in out.values():
            r.proc.kill()
            r.proc.wait()
            if r.proc.stdout is not None:
                r.proc.stdout.close()


def _config(tmp_path: Path, regions: dict[str, Region], sha: str) -> Path:
    cfg = tmp_path / "regions.toml"
    body = ('[failover]\ninterval = "0.2s"\ntimeout = "0.5s"\nfailure_threshold = 3\nsuccess_threshold = 2\n'
            'min_dwell = "1s"\nmax_dwell = "4s"\nstate_dir = "state"\n\n[actuator]\npath = "routing.json"\n\n')
    for prio, (name, r) in enumerate(regions.items(), 1):
        body += (f'[regions.{name}]\nhealth_url = "{r.url}/health"\npriority = {prio}\nweight = 100\n'
                 f'expected_sha256 = "{sha}"\n\n')
    cfg.write_text(body)
    return cfg


def _events(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "state" / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _routing(tmp_path: Path) -> dict[str, int]:
    try:
        doc: dict[str, int] = json.loads((tmp_path / "routing.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc


def _routed(tmp_path: Path, want: dict[str, int]) -> bool:
    """The actuator's file shows ``want`` and the controller has recorded the round that did it."""
    return _routing(tmp_path) == want and _status(tmp_path).get("applied") == want


def _status(tmp_path: Path) -> dict[str, Any]:
    try:
        doc: dict[str, Any] = json.loads((tmp_path / "state" / "state.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return doc


def test_failover_failback_flapping_wrong_model_and_never_zero(tmp_path: Path,
                                                               regions: tuple[dict[str, Region], str]) -> None:
    rs, sha = regions
    cfg = _config(tmp_path, rs, sha)
    ctl = subprocess.Popen([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(cfg)],
                           stderr=subprocess.PIPE, text=True)
    try:
        _wait("every region healthy", lambda: len(_status(tmp_path).get("regions", {})) == 3 and all(
            r["health"] == "healthy" for r in _status(tmp_path)["regions"].values()))
        assert _routing(tmp_path) == {"eu": 100}

        rs["eu"].set("flap")  # fails every other probe: never 3 in a row
        start = _status(tmp_path)["rounds"]
        _wait("15 rounds of flapping", lambda: _status(tmp_path)["rounds"] >= start + 15)
        rs["eu"].set("ok")
        assert not [e for e in _events(tmp_path) if e["kind"] in ("failover", "unhealthy")]

        rs["us"].set("wrong")  # the first standby now serves another model
        _wait("us ineligible", lambda: _status(tmp_path)["regions"]["us"]["health"] == "unhealthy")
        assert "expected " + sha in _status(tmp_path)["regions"]["us"]["last"]
        rs["eu"].proc.kill()  # the primary's region is lost
        _wait("failover", lambda: _routed(tmp_path, {"ap": 100}))
        failover = [e for e in _events(tmp_path) if e["kind"] == "failover"]
        assert len(failover) == 1 and failover[0]["evidence"]["eu"].startswith(("unreachable", "no answer"))
        assert _status(tmp_path)["regions"]["eu"]["fails"] == 3  # after exactly N failed probes

        rs["us"].set("ok")  # the right model again: failback to the better standby, after M and the dwell
        _wait("failback to us", lambda: _routed(tmp_path, {"us": 100}))
        kinds = [e["kind"] for e in _events(tmp_path)]
        assert kinds.count("failback") == 1 and "failback-waiting" in kinds

        rs["us"].set("500")
        rs["ap"].set("hang")  # probes time out
        _wait("the alert", lambda: any(e["kind"] == "no-healthy-region" for e in _events(tmp_path)))
        assert _routing(tmp_path) == {"us": 100}  # never zero: the last routing stays

        status = subprocess.run([sys.executable, "-m", "weightvault", "failover", "status", "--config", str(cfg),
                                 "--json"], capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        assert doc["routing"] == {"us": 100} and doc["regions"]["ap"]["health"] == "unhealthy"
        assert [e["kind"] for e in doc["events"]][-1] == "no-healthy-region"
    finally:
        ctl.send_signal(signal.SIGTERM)
        try:
            ctl.wait(timeout=30)
        finally:
            if ctl.stderr is not None:
                ctl.stderr.close()
    assert ctl.returncode == 0


def test_bad_configuration_is_refused_with_the_line_to_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "regions.toml"
    cases = [('[regions.a]\nhealth_url = "http://x/health"\n[actuator]\npath = "r.json"\n', "at least two"),
             ('[regions.a]\nhealth_url = "http://x"\n[regions.b]\nhealth_url = "http://y"\n[actuator]\n'
              'kind = "route53"\nhosted_zone_id = "Z1"\nrecord_name = "m."\n', "route53_value"),
             ('[failover]\ninterval = "often"\n[regions.a]\nhealth_url = "http://x"\n[regions.b]\n'
              'health_url = "http://y"\n[actuator]\npath = "r"\n', "interval"),
             ('[regions.a]\nhealth_url = "ftp://x"\n[regions.b]\nhealth_url = "http://y"\n[actuator]\npath = "r"\n',
              "not an http"),
             ('[regions.a]\nhealth_url = "http://x"\n[regions.b]\nhealth_url = "http://y"\n', "actuator"),
             ('[failover]\npromote_restore = true\n[regions.a]\nhealth_url = "http://x"\n[regions.b]\n'
              'health_url = "http://y"\n[actuator]\npath = "r"\n', "no region has model_dir"),
             ('[regions.a]\nhealth_url = "http://x"\n[regions.b]\nhealth_url = "http://y"\nmodel_dir = "m"\n'
              '[actuator]\npath = "r"\n', "needs all of model_dir, repository and snapshot")]
    two = '[regions.a]\nhealth_url = "http://x"\n[regions.b]\nhealth_url = "http://y"\n[actuator]\npath = "r"\n'
    cases += [('[failover]\nquorum = 2\n' + two, "quorum without [[vantage]]"),
              ('[failover]\nquorum = 3\n' + two + '[[vantage]]\nname = "a"\n[[vantage]]\nname = "b"\n',
               "from 1 to 2"),
              (two + '[[vantage]]\nname = "a"\nproxy = "socks5://p"\n', "not an http(s) URL"),
              ('[failover]\nvalidate_level = 4\n' + two, "validate_check"),
              ('[failover]\nvalidate_check = "m:f"\n' + two, "only with level 4"),
              (two + '[ledger]\npassword_env = "X"\n', "[ledger] needs repository"),
              (two.replace('"http://y"\n', '"http://y"\nexpected_file = "m"\nexpected_sha256 = "' + "a" * 64 + '"\n'),
               "not both"),
              (two.replace('"http://y"\n', '"http://y"\nexpected_file = "m"\n'), "needs repository and snapshot"),
              (two.replace('"http://y"\n', '"http://y"\nrepository = "r"\nsnapshot = "latest"\n'),
               "serve a restore (model_dir) or the expected model"),
              (two.replace('"http://y"\n', '"http://y"\nhealthy_status = [200, 999]\n'), "healthy_status")]
    for text, words in cases:
        cfg.write_text(text)
        r = subprocess.run([sys.executable, "-m", "weightvault", "failover", "status", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 7 and words in r.stderr, (text, r.stderr)
    assert subprocess.run([sys.executable, "-m", "weightvault", "failover", "status", "--config",
                           str(tmp_path / "nope.toml")], capture_output=True, text=True, timeout=60).returncode == 7


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def _model_server(weights: Path, mode: Path) -> tuple[str, subprocess.Popen[str]]:
    mode.write_text("ok\n")
    proc = subprocess.Popen([sys.executable, "-m", "weightvault.testing.model_server", "--weights", str(weights),
                             "--mode-file", str(mode)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    return line.split()[-1], proc


@dataclass
class Runbook:
    cfg: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[str]]
    repo: Repository
    snap: Any
    release: Path  # the right weights, as backed up


@pytest.fixture
def runbook(tmp_path: Path) -> Iterator[Runbook]:
    """Two regions: eu serves the release, us a stale model in a directory the controller can
    restore into from a repository holding the release (``latest:run=prod``)."""
    rng = np.random.default_rng(7)
    right = {"w": rng.standard_normal((128, 128), dtype=np.float32)}
    release = tmp_path / "release" / "model" / "model.safetensors"
    release.parent.mkdir(parents=True)
    save_file(right, str(release))
    sha = hashlib.sha256(release.read_bytes()).hexdigest()
    repo = Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    snap = repo.backup([release.parent], tags=["run=prod"]).snapshot
    for name, weights in (("eu", right), ("us", {"w": np.zeros((128, 128), dtype=np.float32)})):
        (tmp_path / name / "model").mkdir(parents=True)
        save_file(weights, str(tmp_path / name / "model" / "model.safetensors"))
    procs: list[subprocess.Popen[str]] = []
    try:
        urls = {}
        for name in ("eu", "us"):
            urls[name], proc = _model_server(tmp_path / name / "model" / "model.safetensors", tmp_path / f"{name}.mode")
            procs.append(proc)
        cfg = tmp_path / "regions.toml"
        cfg.write_text(
            '[failover]\ninterval = "0.2s"\ntimeout = "0.5s"\nfailure_threshold = 3\nsuccess_threshold = 2\n'
            'min_dwell = "1s"\nstate_dir = "state"\npromote_restore = true\nvalidate_level = 3\n\n'
            '[actuator]\npath = "routing.json"\n\n'
            f'[regions.eu]\nhealth_url = "{urls["eu"]}/health"\npriority = 1\nexpected_sha256 = "{sha}"\n\n'
            f'[regions.us]\nhealth_url = "{urls["us"]}/health"\npriority = 2\nexpected_sha256 = "{sha}"\n'
            f'model_dir = "us/model"\nrepository = "repo"\nsnapshot = "latest:run=prod"\npassword_env = "WV_PW"\n')
        yield Runbook(cfg, {**os.environ, "WV_PW": PASSWORD, "HOME": str(tmp_path / "home")}, procs, repo, snap,
                      release)
    finally:
        _stop(procs)


def test_restore_before_promote_brings_a_stale_standby_up_to_date_then_routes(tmp_path: Path,
                                                                            runbook: Runbook) -> None:
    ctl = subprocess.Popen([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(runbook.cfg)],
                           stderr=subprocess.DEVNULL, env=runbook.env)
    try:
        _wait("eu healthy, us stale", lambda: _status(tmp_path).get("regions", {}).get("eu", {}).get("health")
              == "healthy" and _status(tmp_path)["regions"]["us"].get("wrong_model") is True)
        assert _routing(tmp_path) == {"eu": 100}
        runbook.procs[0].kill()  # the primary region is lost; the only standby serves a stale model
        _wait("failover to the restored standby", lambda: _routed(tmp_path, {"us": 100}))
        kinds = [e["kind"] for e in _events(tmp_path)]
        assert kinds.index("restore-needed") < kinds.index("restored") < kinds.index("failover")
        assert (tmp_path / "us" / "model" / "model.safetensors").read_bytes() == runbook.release.read_bytes()
        assert [p.name for p in (tmp_path / "us").iterdir() if p.name.startswith("model.before-")]  # kept
        recovered = next(e for e in _events(tmp_path) if e["kind"] == "recovered")
        assert float(recovered["evidence"]["rto_s"]) > 0 and _status(tmp_path)["last_rto_s"] > 0
        assert runbook.snap.id[:8] in next(e for e in _events(tmp_path) if e["kind"] == "restored")["reason"]
    finally:
        ctl.send_signal(signal.SIGTERM)
        ctl.wait(timeout=30)
    assert ctl.returncode == 0  # a stopped controller has written what it queued for the ledger
    records = runbook.repo.ledger()
    steps = [r["op"] if r["op"] != "failover" else r["detail"].split(":")[0].split(" ")[0] for r in records]
    assert steps == ["backup", "no-healthy-region", "restore", "failover", "recovered"]  # restored before routed
    assert not records[1]["ok"] and records[1]["target"] == "eu=100"  # the alert: the routing stayed
    moved = next(r for r in records if r["op"] == "failover" and r["detail"].startswith("failover"))
    assert moved["source"] == "eu=100" and moved["target"] == "us=100" and moved["ok"]
    assert "probes: eu: " in moved["detail"] and "us: healthy" in moved["detail"]  # the evidence
    rto = next(r for r in records if r["op"] == "failover" and r["detail"].startswith("recovered"))
    assert rto["duration_s"] == pytest.approx(_status(tmp_path)["last_rto_s"], abs=0.01) and rto["duration_s"] > 0
    assert runbook.repo.verify_ledger().ok


def test_failover_drill_rehearses_the_runbook_without_moving_traffic(tmp_path: Path, runbook: Runbook) -> None:
    def drill(region: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "failover", "drill", "--config", str(runbook.cfg),
                               "--region", region, "--json"], capture_output=True, text=True, env=runbook.env,
                              timeout=300)

    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "servecheck.py").write_text(
        "import os\nimport numpy as np\nfrom safetensors.numpy import load_file\n\n"
        "def forward(root):\n"
        "    w = load_file(os.path.join(root, 'model.safetensors'))['w']\n"
        "    want = float(os.environ['WV_TEST_FORWARD'])\n"
        "    got = float((w @ np.ones(w.shape[1], dtype=np.float32)).sum())\n"
        "    return [] if abs(got - want) < 1e-3 * max(1.0, abs(want)) else [f'forward pass {got}, expected {want}']\n")
    text = runbook.cfg.read_text().replace("validate_level = 3\n", 'validate_level = 4\nvalidate_check = '
                                                                    '"servecheck:forward"\n')
    runbook.cfg.write_text(text)
    from safetensors.numpy import load_file
    w = load_file(str(runbook.release))["w"]
    runbook.env.update(PYTHONPATH=str(checks), WV_TEST_FORWARD="12345.0")  # not what the release computes
    before = (tmp_path / "us" / "model" / "model.safetensors").read_bytes()
    failed = drill("us")
    assert failed.returncode != 0 and "forward pass" in failed.stderr, failed.stderr
    assert (tmp_path / "us" / "model" / "model.safetensors").read_bytes() == before  # nothing swapped in

    runbook.env["WV_TEST_FORWARD"] = repr(float((w @ np.ones(w.shape[1], dtype=np.float32)).sum()))
    res = drill("us")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["kind"] == "drill" and float(doc["evidence"]["rto_s"]) >= float(doc["evidence"]["restore_s"]) > 0
    assert "level 4" in doc["reason"]
    assert (tmp_path / "us" / "model" / "model.safetensors").read_bytes() == runbook.release.read_bytes()
    assert [e["kind"] for e in _events(tmp_path)] == ["drill"] and not (tmp_path / "routing.json").exists()
    rec = [r for r in runbook.repo.ledger() if r["op"] == "failover-drill"]
    assert len(rec) == 1 and rec[0]["target"] == "us" and rec[0]["source"] is None
    assert rec[0]["duration_s"] == pytest.approx(float(doc["evidence"]["rto_s"]), abs=0.01)
    refused = drill("eu")
    assert refused.returncode == 2 and "not one the controller can restore into" in refused.stderr


def test_route53_weighted_records_follow_the_decisions(tmp_path: Path,
                                                      regions: tuple[dict[str, Region], str]) -> None:
    import boto3

    from weightvault.testing.s3server import s3_endpoint

    rs, sha = regions
    with s3_endpoint() as ep:  # moto's server: Route 53 too
        r53 = boto3.client("route53", endpoint_url=ep.endpoint)
        zone = r53.create_hosted_zone(Name="example.com.", CallerReference="wv-test")["HostedZone"]["Id"]
        cfg = _config(tmp_path, rs, sha)
        text = cfg.read_text().replace('[actuator]\npath = "routing.json"\n', (
            f'[actuator]\nkind = "route53"\nhosted_zone_id = "{zone}"\nrecord_name = "model.example.com."\n'
            f'ttl = 30\nendpoint = "{ep.endpoint}"\n'))
        for name in rs:
            value = f'route53_value = "{name}.serve.example.com"\n'
            text = text.replace(f"[regions.{name}]\n", f"[regions.{name}]\n{value}")
        cfg.write_text(text)

        def weights() -> dict[str, int]:
            sets = r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
            return {s["SetIdentifier"]: s["Weight"] for s in sets if s.get("SetIdentifier")}

        ctl = subprocess.Popen([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(cfg)],
                               stderr=subprocess.DEVNULL)  # with the test server's throwaway AWS credentials
        try:
            _wait("the first routing in Route 53", lambda: weights() == {"eu": 100, "us": 0, "ap": 0})
            values = {s["SetIdentifier"]: s["ResourceRecords"][0]["Value"]
                      for s in r53.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
                      if s.get("SetIdentifier")}
            assert values["us"] == "us.serve.example.com"
            rs["eu"].proc.kill()
            _wait("failover in Route 53", lambda: weights() == {"eu": 0, "us": 100, "ap": 0}
                  and _status(tmp_path).get("applied") == {"us": 100})  # and the round that did it recorded
        finally:
            ctl.send_signal(signal.SIGTERM)
            ctl.wait(timeout=30)


def test_the_agent_runs_the_policys_failover_controller_and_notifies(tmp_path: Path,
                                                                    regions: tuple[dict[str, Region], str]) -> None:
    from test_agent import AgentProc
    from test_cli import cli_env

    rs, sha = regions
    _config(tmp_path, rs, sha)  # regions.toml beside the policy
    Repository.init(tmp_path / "repo", PASSWORD, kdf=FAST_KDF)
    sent = tmp_path / "sent.jsonl"
    append = "import os, sys; open(sys.argv[1], 'a').write(os.environ['WV_EVENT_JSON'] + chr(10))"
    policy = tmp_path / "policy.toml"
    policy.write_text(f"""
[repositories.main]
url = "{tmp_path / 'repo'}"

[failover]
config = "regions.toml"

[[notify]]
on = ["failover.*"]
command = ["{sys.executable}", "-c", "{append}", "{sent}"]
""")
    env = {**cli_env(tmp_path / "home"), "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
           "WEIGHTVAULT_PASSWORD": PASSWORD}
    agent = AgentProc(["agent", "--policy", str(policy), "--interval", "1h"], env, tmp_path / "agent.log")
    try:
        _wait("the agent's controller routing", lambda: _routed(tmp_path, {"eu": 100}))
        rs["eu"].proc.kill()
        agent.wait_for(lambda ev: any(e["event"] == "failover.failover" for e in ev), what="failover.failover")
        assert _routing(tmp_path) == {"us": 100}
        _wait("the notification", lambda: sent.exists() and "failover.failover" in sent.read_text())
        note = next(json.loads(x) for x in sent.read_text().splitlines() if '"failover.failover"' in x)
        assert note["routing"] == "us=100" and "eu unhealthy" in note["reason"]
    finally:
        assert agent.stop() == 0


def test_probes_from_several_vantage_points_need_a_quorum(tmp_path: Path,
                                                          regions: tuple[dict[str, Region], str]) -> None:
    """Two vantage points are real HTTP proxies (another network, as far as the probes go); one
    of three losing its way to the primary moves nothing, two of three fail it over."""
    rs, sha = regions
    procs, proxies = [], {}
    try:
        for name in ("p1", "p2"):
            (tmp_path / f"{name}.blocked").write_text("")
            proc = subprocess.Popen([sys.executable, "-m", "weightvault.testing.http_proxy", "--block-file",
                                     str(tmp_path / f"{name}.blocked")], stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None
            proxies[name] = proc.stdout.readline().split()[-1]
        cfg = _config(tmp_path, rs, sha)
        cfg.write_text(cfg.read_text().replace('state_dir = "state"\n', 'state_dir = "state"\nquorum = 2\n')
                       + '[[vantage]]\nname = "here"\n\n'
                       + "".join(f'[[vantage]]\nname = "{n}"\nproxy = "{u}"\n\n' for n, u in proxies.items()))
        ctl = subprocess.Popen([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(cfg)],
                               stderr=subprocess.DEVNULL)
        try:
            _wait("every region healthy", lambda: len(_status(tmp_path).get("regions", {})) == 3 and all(
                r["health"] == "healthy" for r in _status(tmp_path)["regions"].values()))
            assert _status(tmp_path)["vantages"] == ["here", "p1", "p2"] and _routing(tmp_path) == {"eu": 100}
            eu = rs["eu"].url.split("//")[1]
            (tmp_path / "p1.blocked").write_text(eu + "\n")  # p1 cannot reach eu
            start = _status(tmp_path)["rounds"]
            _wait("10 rounds with p1 cut off", lambda: _status(tmp_path)["rounds"] >= start + 10)
            assert _routing(tmp_path) == {"eu": 100} and _status(tmp_path)["regions"]["eu"]["health"] == "healthy"
            assert not [e for e in _events(tmp_path) if e["kind"] in ("failover", "unhealthy")]
            (tmp_path / "p2.blocked").write_text(eu + "\n")  # now two of three cannot: failover
            _wait("failover", lambda: _routed(tmp_path, {"us": 100}))
            failover = next(e for e in _events(tmp_path) if e["kind"] == "failover")
            assert "healthy from 1 of 3 vantage points, quorum 2" in failover["evidence"]["eu"]
            assert "p1: HTTP 502" in failover["evidence"]["eu"] and "here: healthy" in failover["evidence"]["eu"]
        finally:
            ctl.send_signal(signal.SIGTERM)
            ctl.wait(timeout=30)
        assert ctl.returncode == 0
    finally:
        _stop(procs)


def test_a_status_code_rule_decides_health_instead_of_the_json_answer(
        regions: tuple[dict[str, Region], str]) -> None:
    import urllib3

    from weightvault.failover.config import RegionConfig
    from weightvault.failover.controller import http_probe

    rs, sha = regions
    pool = urllib3.PoolManager()
    eu = rs["eu"]
    json_rule = RegionConfig("eu", f"{eu.url}/health", 1, 100, sha)
    code_rule = RegionConfig("eu", f"{eu.url}/health", 1, 100, None, healthy_status=(200, 204))
    assert http_probe(pool, json_rule, 1.0).ok and http_probe(pool, code_rule, 1.0).identity == sha
    eu.set("unhealthy")  # 200 with {"status": "unhealthy"}: the JSON rule fails it, the code rule does not
    assert not http_probe(pool, json_rule, 1.0).ok and http_probe(pool, code_rule, 1.0).ok
    eu.set("500")
    assert [http_probe(pool, r, 1.0).reason for r in (json_rule, code_rule)] == ["HTTP 500", "HTTP 500"]
    odd = RegionConfig("eu", f"{eu.url}/health", 1, 100, None, healthy_status=(500,))  # whatever the user says
    probe = http_probe(pool, odd, 1.0)  # a JSON body without model_sha256: healthy, no identity
    assert probe.ok and probe.identity is None, probe


def test_the_expected_model_can_be_named_by_a_file_of_the_release_snapshot(tmp_path: Path,
                                                                          runbook: Runbook) -> None:
    sha = hashlib.sha256(runbook.release.read_bytes()).hexdigest()
    text = runbook.cfg.read_text().replace(f'expected_sha256 = "{sha}"', 'expected_file = "model.safetensors"')
    text = text.replace("[regions.us]", 'repository = "repo"\nsnapshot = "latest:run=prod"\npassword_env = "WV_PW"'
                        "\n\n[regions.us]")  # eu: identity only (no model_dir)
    runbook.cfg.write_text(text)

    def run(rounds: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "weightvault", "failover", "run", "--config", str(runbook.cfg),
                               "--rounds", rounds], capture_output=True, text=True, env=runbook.env, timeout=120)

    res = run("4")
    assert res.returncode == 0, res.stderr
    regions = _status(tmp_path)["regions"]
    assert regions["eu"]["health"] == "healthy"  # serves the file's SHA-256 as recorded in the snapshot
    assert regions["us"]["wrong_model"] and f"expected {sha}" in regions["us"]["last"]
    runbook.cfg.write_text(text.replace('expected_file = "model.safetensors"', 'expected_file = "nope.bin"', 1))
    bad = run("1")
    assert bad.returncode == 2 and "holds no file 'nope.bin'" in bad.stderr, bad.stderr
