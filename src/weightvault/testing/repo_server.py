"""A real ``weightvault serve`` process on 127.0.0.1 for tests, over TLS with a throwaway CA.

    with repo_server(tmp_path) as srv:              # a CA, a server certificate, the process
        token = srv.add_user("ci", {"*": "append"})  # users are added to the server's users file
        backend = HttpBackend(srv.url("runs"), token=token, ca_file=str(srv.ca))

``extra`` adds keys to the ``[server]`` table (``maintenance_windows``, ``max_object_size``,
``quota``, ``login_failures``); ``dashboard`` adds a ``[dashboard]`` table (listening on a free
port unless it says otherwise). The process is stopped with SIGTERM when the block ends.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["RepoServer", "make_certificates", "repo_server", "stop"]


def make_certificates(where: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) PEM files for 127.0.0.1 and localhost."""
    where.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weightvault test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = where / "ca.pem", where / "cert.pem", where / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _toml(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers and arrays of them are valid TOML


@dataclass
class RepoServer:
    base: str
    config: Path
    ca: Path
    state_dir: Path
    process: subprocess.Popen[str]
    dashboard: str | None = None  # the dashboard's base URL when the config has [dashboard]

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def add_user(self, name: str, roles: dict[str, str], password: str | None = None) -> str:
        """Add a user to the running server's users file; returns a fresh API token."""
        from weightvault.server.users import UserStore

        store = UserStore(self.state_dir / "users.json")
        store.add(name, roles, password)
        token = store.update(name, new_token=True)
        assert token is not None
        return token

    def cli(self, *args: str, stdin: str | None = None, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        """``weightvault serve --config CONFIG ARGS`` as a real process."""
        proc = subprocess.run([sys.executable, "-m", "weightvault", "serve", "--config", str(self.config), *args],
                              capture_output=True, text=True, input=stdin, timeout=120)
        if check is not None:
            assert proc.returncode == check, proc.stdout + proc.stderr
        return proc


@contextlib.contextmanager
def repo_server(where: Path, *, tls: bool = True, dashboard: dict[str, Any] | None = None,
                **extra: Any) -> Iterator[RepoServer]:
    ca, cert, key = make_certificates(where / "tls")
    lines = ['[server]', 'listen = "127.0.0.1:0"', f'state_dir = {_toml(str(where / "state"))}',
             f'root = {_toml(str(where / "repos"))}']
    if tls:
        lines += [f"tls_cert = {_toml(str(cert))}", f"tls_key = {_toml(str(key))}"]
    lines += [f"{k} = {_toml(v)}" for k, v in extra.items()]
    if dashboard is not None:
        lines += ["[dashboard]"] + [f"{k} = {_toml(v)}" for k, v in {"listen": "127.0.0.1:0", **dashboard}.items()]
    config = where / "server.toml"
    config.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIGHTVAULT_")}
    log = open(where / "server.log", "w")  # noqa: SIM115 - closed below; a pipe nobody reads could fill up
    proc = subprocess.Popen([sys.executable, "-m", "weightvault", "serve", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # printed once the socket is bound and listening
        if not line.startswith("listening on "):
            proc.kill()
            proc.wait()
            raise RuntimeError(f"weightvault serve did not start: {line}{(where / 'server.log').read_text()}")
        dash = proc.stdout.readline().split()[-1] if dashboard is not None else None
        yield RepoServer(line.split()[-1], config, ca, where / "state", proc, dash)
    finally:
        stop(proc, log)


def stop(proc: subprocess.Popen[str], log: Any) -> None:
    """SIGTERM a test's server process (SIGKILL after 30 s), then close its pipe and log file."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    log.close()
