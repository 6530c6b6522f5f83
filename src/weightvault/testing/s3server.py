"""An S3-compatible server for tests: moto's standalone server on 127.0.0.1, or an external endpoint.

    with s3_endpoint() as ep:          # starts ``python -m moto.server`` on a free port
        url = ep.url("my-test")        # s3://<bucket>/my-test-<random>: a fresh, empty prefix
        Repository.init(url, pw, storage=ep.storage)

Set ``WEIGHTVAULT_TEST_S3_ENDPOINT`` (and ``WEIGHTVAULT_TEST_S3_BUCKET``, an existing bucket, plus
the usual ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_DEFAULT_REGION``) to run the same
tests against MinIO, Ceph RGW or AWS instead; nothing is started then and every test works under
its own random prefix of that bucket.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightvault.backends.factory import StorageOptions
from weightvault.backends.retry import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Endpoint", "s3_endpoint"]

_FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3Endpoint:
    endpoint: str
    bucket: str
    external: bool

    @property
    def storage(self) -> StorageOptions:
        """Options for this endpoint; retries are quick (tests inject their own faults)."""
        return StorageOptions(s3_endpoint=self.endpoint, retry=RetryPolicy(attempts=6, base_delay=0.01, max_delay=0.2))

    def url(self, name: str = "t") -> str:
        return f"s3://{self.bucket}/{name}-{uuid.uuid4().hex[:12]}"

    def client(self) -> S3Client:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0, what: str = "moto server") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own http://127.0.0.1 URL
                return
        except urllib.error.HTTPError:
            return  # it answers: ready
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} at {url} not ready after {timeout} s")


@contextlib.contextmanager
def s3_endpoint() -> Iterator[S3Endpoint]:
    """Start moto (unless an external endpoint is configured) and yield it with a bucket."""
    external = os.environ.get("WEIGHTVAULT_TEST_S3_ENDPOINT")
    if external:
        bucket = os.environ.get("WEIGHTVAULT_TEST_S3_BUCKET")
        if not bucket:
            raise RuntimeError("WEIGHTVAULT_TEST_S3_ENDPOINT is set: also set WEIGHTVAULT_TEST_S3_BUCKET")
        yield S3Endpoint(external, bucket, True)
        return
    for k, v in _FAKE_CREDENTIALS.items():
        os.environ[k] = v  # moto accepts any; never send real credentials to a test server
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        ep = S3Endpoint(f"http://127.0.0.1:{port}", "weightvault-test", False)
        _wait_ready(ep.endpoint, proc)
        ep.client().create_bucket(Bucket=ep.bucket)
        yield ep
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc``, then kill it if it is still there after 10 s."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
