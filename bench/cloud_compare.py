"""Cloud backends vs local disk, and the client libraries behind them (weightvault only).

In one run, with every emulator started here on 127.0.0.1 as the tests start them:

1. **Repositories**: each corpus backed up and restored (fsynced, verified) to local disk, S3
   (moto, boto3), Azure Blob (Azurite, obstore) and GCS (gcp-storage-emulator,
   google-cloud-storage), ``--connections`` concurrent requests each.
2. **Client libraries** (``--clients``): 32 objects of 8 MiB put then got by 8 threads with each
   library that could serve a store: obstore and azure-storage-blob on Azurite, boto3 and obstore
   on moto, google-cloud-storage and obstore on the GCS emulator; MB/s and the client's own CPU
   seconds (``getrusage``), which is what a library costs a 2-core backup host.

The emulators run on the same 2 cores and hold data in memory, so this measures request overhead
and client CPU, not a cloud's network.

    .venv/bin/python bench/cloud_compare.py --clients             # minilm + the client libraries
    .venv/bin/python bench/cloud_compare.py --corpus finetune-frozen
    .venv/bin/python bench/cloud_compare.py --smoke                # tiny corpus (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare
from s3_compare import run_one

from weightvault.backends.azure import AzureBackend, azure_settings, parse_az_url
from weightvault.backends.base import Backend
from weightvault.backends.gcs import GcsBackend, parse_gs_url
from weightvault.backends.local import LocalBackend
from weightvault.backends.retry import RetryingBackend, RetryPolicy
from weightvault.backends.s3 import S3Backend, parse_s3_url
from weightvault.testing.cloudemu import AZURITE_ACCOUNT, AZURITE_KEY, AzureEndpoint, GcsEndpoint, azurite, gcs_emulator
from weightvault.testing.s3server import S3Endpoint, s3_endpoint

Endpoints = tuple[S3Endpoint, AzureEndpoint, GcsEndpoint]


@contextlib.contextmanager
def endpoints() -> Iterator[Endpoints]:
    with s3_endpoint() as s3, azurite() as az, gcs_emulator() as gs:
        yield s3, az, gs


def backends(eps: Endpoints, connections: int) -> dict[str, Callable[[], Backend]]:
    s3, az, gs = eps

    def s3b() -> Backend:
        bucket, prefix = parse_s3_url(s3.url("bench"))
        return S3Backend(bucket, prefix, endpoint_url=s3.endpoint, max_concurrency=connections)

    def azb() -> Backend:
        container, prefix = parse_az_url(az.url("bench"))
        return AzureBackend(container, prefix, settings=azure_settings(az.endpoint, env=az.env))

    def gsb() -> Backend:
        bucket, prefix = parse_gs_url(gs.url("bench"))
        return GcsBackend(bucket, prefix, endpoint=gs.endpoint, max_concurrency=connections)

    return {"S3 (moto, boto3)": s3b, "Azure (Azurite, obstore)": azb, "GCS (emulator, google-cloud-storage)": gsb}


def bench_corpus(corpus: Path, eps: Endpoints, connections: int, work: Path) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    local_dir = work / "local-repo"
    shutil.rmtree(local_dir, ignore_errors=True)
    rows["local disk"] = run_one(LocalBackend(local_dir), corpus, work, None)
    shutil.rmtree(local_dir)
    for label, make in backends(eps, connections).items():
        b = RetryingBackend(make(), RetryPolicy())
        rows[label] = run_one(b, corpus, work, b, connections)
    return rows


# -- client libraries ------------------------------------------------------------------------------
def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(put: Callable[[str, bytes], object], get: Callable[[str], bytes], n: int = 32,
             size: int = 8 << 20) -> dict[str, Any]:
    data = [os.urandom(size) for _ in range(4)]
    out: dict[str, Any] = {}
    try:
        for phase, fn in (("put", lambda i: put(f"o{i}", data[i % 4])), ("get", lambda i: len(get(f"o{i}")))):
            t, c = time.perf_counter(), _cpu()
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(fn, range(n)))
            wall = time.perf_counter() - t
            out[f"{phase}_mb_s"], out[f"{phase}_cpu_s"] = n * size / 1e6 / wall, _cpu() - c
    except Exception as exc:  # a library that cannot talk to this emulator: say so, with its words
        text = str(exc)
        cause = re.search(r"(status code: \d{3}[ A-Za-z]*|ETag[^\n]*|MissingEtag)", text)  # obstore's root cause
        why = f" ({cause.group(1)})" if cause else ""
        out["error"] = f"{type(exc).__name__}: {text.splitlines()[0][:90]}...{why}"
    return out


def bench_clients(eps: Endpoints) -> dict[str, Any]:
    import boto3
    import obstore
    from azure.storage.blob import BlobServiceClient
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from obstore.store import AzureStore, GCSStore, S3Store

    s3, az, gs = eps
    rows: dict[str, Any] = {}
    for name in ("libaz1", "libaz2"):
        az.create_container(name)
    store = AzureStore("libaz1", account_name=AZURITE_ACCOUNT, access_key=AZURITE_KEY, endpoint=az.endpoint,
                       client_options={"allow_http": True})
    rows["Azurite: obstore"] = _measure(lambda k, d: obstore.put(store, k, d, use_multipart=False),
                                        lambda k: bytes(obstore.get(store, k).bytes()))
    cc = BlobServiceClient.from_connection_string(az.connection_string).get_container_client("libaz2")
    rows["Azurite: azure-storage-blob"] = _measure(lambda k, d: cc.upload_blob(k, d, overwrite=True),
                                                   lambda k: cc.download_blob(k).readall())
    client = boto3.client("s3", endpoint_url=s3.endpoint)
    rows["moto: boto3"] = _measure(lambda k, d: client.put_object(Bucket=s3.bucket, Key=f"lib1/{k}", Body=d),
                                   lambda k: client.get_object(Bucket=s3.bucket, Key=f"lib1/{k}")["Body"].read())
    s3store = S3Store(s3.bucket, endpoint=s3.endpoint, region="us-east-1",  # moto's credentials: $AWS_*
                      client_options={"allow_http": True})
    rows["moto: obstore"] = _measure(lambda k, d: obstore.put(s3store, f"lib2/{k}", d, use_multipart=False),
                                     lambda k: bytes(obstore.get(s3store, f"lib2/{k}").bytes()))
    gcl = storage.Client(project="bench", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                         client_options={"api_endpoint": gs.endpoint})
    bucket = gcl.bucket(gs.bucket)
    rows["GCS emulator: google-cloud-storage"] = _measure(
        lambda k, d: bucket.blob(f"lib1/{k}").upload_from_string(d, checksum=None),
        lambda k: bucket.blob(f"lib1/{k}").download_as_bytes(checksum=None))
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as sa:
        json.dump({"gcs_base_url": gs.endpoint, "disable_oauth": True, "client_email": "", "private_key": "",
                   "private_key_id": ""}, sa)
    try:
        gstore = GCSStore(gs.bucket, service_account_path=sa.name, client_options={"allow_http": True})
        rows["GCS emulator: obstore"] = _measure(lambda k, d: obstore.put(gstore, f"lib2/{k}", d, use_multipart=False),
                                                 lambda k: bytes(obstore.get(gstore, f"lib2/{k}").bytes()))
    finally:
        os.unlink(sa.name)
    return rows


# -- output ----------------------------------------------------------------------------------------
def markdown(name: str, rows: dict[str, Any], connections: int) -> str:
    local = rows["local disk"]
    out = [f"corpus {name}: {local['raw_bytes'] / 2**20:.1f} MiB, {connections} connections", "",
           "| backend | backup s | backup MB/s | × local | restore s | restore MB/s | × local | requests | identical |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, r in rows.items():
        bx, rx = r["backup_mb_s"] / local["backup_mb_s"], r["restore_mb_s"] / local["restore_mb_s"]
        out.append(f"| {label} | {r['backup_s']:.2f} | {r['backup_mb_s']:.1f} | {bx:.2f} | {r['restore_s']:.2f} "
                   f"| {r['restore_mb_s']:.1f} | {rx:.2f} | {r.get('requests', '')} "
                   f"| {'yes' if r['identical'] else 'NO'} |")
    return "\n".join(out)


def markdown_clients(rows: dict[str, Any]) -> str:
    out = ["| store: library | put MB/s | put client CPU s | get MB/s | get client CPU s |",
           "|---|---:|---:|---:|---:|"]
    for label, r in rows.items():
        if "error" in r:
            out.append(f"| {label} | failed: {r['error']} | | | |")
        else:
            out.append(f"| {label} | {r['put_mb_s']:.0f} | {r['put_cpu_s']:.2f} | {r['get_mb_s']:.0f} "
                       f"| {r['get_cpu_s']:.2f} |")
    return "\n".join(out)


def _smoke_corpus(tmp: Path) -> Path:
    src = tmp / "corpus" / "run"
    for i in range(3):
        (src / f"d{i}").mkdir(parents=True)
        (src / f"d{i}" / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        (src / f"d{i}" / "notes.txt").write_bytes(b"checkpoint notes\n" * 200)
    return src


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", action="append")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--clients", action="store_true", help="also compare the client libraries")
    ap.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "_work")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    results: dict[str, Any] = {}
    with endpoints() as eps:
        if a.smoke:
            tmp = Path(tempfile.mkdtemp(prefix="wv-cloud-smoke-"))
            try:
                results["smoke"] = bench_corpus(_smoke_corpus(tmp), eps, a.connections, tmp / "work")
            finally:
                shutil.rmtree(tmp)
        else:
            for name in a.corpus or ["minilm"]:
                root = compare.ensure_corpus(name, a.work)
                runs = [p for p in root.iterdir() if p.is_dir()]
                results[name] = bench_corpus(runs[0] if len(runs) == 1 else root, eps, a.connections,
                                             a.work / "cloud-bench")
        clients = bench_clients(eps) if a.clients else {}
    for name, rows in results.items():
        print(markdown(name, rows, a.connections) + "\n")
    if clients:
        print(markdown_clients(clients))
    if a.json:
        a.json.write_text(json.dumps({"connections": a.connections, "results": results, "clients": clients},
                                     indent=2))
    return 0 if all(r["identical"] for rows in results.values() for r in rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
