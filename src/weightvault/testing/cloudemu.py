"""Cloud storage emulators for tests, started on 127.0.0.1 on a free port.

    with azurite() as az:              # Azurite's blob service (npm ``azurite``, scripts/setup)
        url = az.url("t")              # az://<container>/t-<random>: a fresh, empty prefix
        Repository.init(url, pw, storage=az.storage)

    with gcs_emulator() as gs:         # gcp-storage-emulator (PyPI), in memory
        url = gs.url("t")

Azurite is looked for at ``$WEIGHTVAULT_AZURITE``, then the project's ``.tools`` folder (where
``scripts/setup`` installs it), then ``azurite-blob`` on ``PATH``; missing, the context manager
raises with the command that installs it. The emulators accept their well-known development
credentials only; ``env`` holds the variables a ``weightvault`` process needs to reach them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from weightvault.backends.factory import StorageOptions
from weightvault.backends.retry import RetryPolicy
from weightvault.testing.s3server import _free_port, _wait_ready, stop_process

__all__ = ["AZURITE_ACCOUNT", "AZURITE_KEY", "AzureEndpoint", "GcsEndpoint", "azurite", "azurite_command",
           "gcs_emulator"]

#: Azurite's documented development account (public; it protects nothing).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_QUICK_RETRY = RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.2)


@dataclass(frozen=True)
class AzureEndpoint:
    endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    container: str

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(azure_endpoint=self.endpoint, retry=_QUICK_RETRY)

    def url(self, name: str = "t") -> str:
        return f"az://{self.container}/{name}-{uuid.uuid4().hex[:12]}"

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient  # a dev dependency: only tests create containers

        BlobServiceClient.from_connection_string(self.connection_string).create_container(name)


@dataclass(frozen=True)
class GcsEndpoint:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        return {"WEIGHTVAULT_GCS_ENDPOINT": self.endpoint}

    @property
    def storage(self) -> StorageOptions:
        return StorageOptions(gcs_endpoint=self.endpoint, retry=_QUICK_RETRY)

    def url(self, name: str = "t") -> str:
        return f"gs://{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"

    def create_bucket(self, name: str) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        storage.Client(project="test", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                       client_options={"api_endpoint": self.endpoint}).create_bucket(name)


def azurite_command() -> list[str]:
    """The command that starts Azurite's blob service; RuntimeError naming the fix if absent."""
    root = Path(__file__).resolve().parents[3]
    for cand in (os.environ.get("WEIGHTVAULT_AZURITE"), root / ".tools" / "node_modules" / ".bin" / "azurite-blob",
                 shutil.which("azurite-blob")):
        if cand and Path(cand).exists():
            return [str(cand)]
    raise RuntimeError("Azurite is not installed: run scripts/setup (npm install --prefix .tools azurite),"
                       " or set WEIGHTVAULT_AZURITE to its azurite-blob")


@contextlib.contextmanager
def azurite(container: str = "weightvault-test") -> Iterator[AzureEndpoint]:
    """Start Azurite's blob service in memory and yield it with ``container`` created."""
    port = _free_port()
    proc = subprocess.Popen(
        [*azurite_command(), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence",
         "--silent", "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ep = AzureEndpoint(f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}", container)
        _wait_ready(ep.endpoint, proc, what="Azurite")
        ep.create_container(container)
        yield ep
    finally:
        stop_process(proc)


@contextlib.contextmanager
def gcs_emulator(bucket: str = "weightvault-test") -> Iterator[GcsEndpoint]:
    """Start gcp-storage-emulator in memory and yield it with ``bucket`` created."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
         "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ep = GcsEndpoint(f"http://127.0.0.1:{port}", bucket)
        _wait_ready(ep.endpoint, proc, what="gcp-storage-emulator")
        ep.create_bucket(bucket)
        yield ep
    finally:
        stop_process(proc)
