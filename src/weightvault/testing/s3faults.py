"""A fault-injecting reverse proxy in front of an S3 endpoint (moto's server in the tests).

    python -m weightvault.testing.s3faults --upstream http://127.0.0.1:PORT --rate 0.05 --seed 7 --counts FILE

Prints ``listening on http://127.0.0.1:PORT``. Every request (any method, path, headers and
body) is forwarded to ``--upstream``; a share ``--rate`` of them gets one fault instead, chosen
evenly from ``FAULTS``:

* ``503``: answered ``503 SlowDown`` without reaching the upstream (S3 throttling);
* ``reset``: the connection is closed without an answer, the request not forwarded;
* ``lost-answer``: the request is forwarded (the upstream applies it) and the connection is then
  closed without the answer: the client must cope with a write that happened but was not
  acknowledged (a retried create-only write finds its own object);
* ``slow``: forwarded after 1.5 s.

``--counts`` is rewritten after each fault with the counts so far (JSON), for the report.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from weightvault.testing._http import serve

__all__ = ["FAULTS", "main"]

FAULTS = ("503", "reset", "lost-answer", "slow")
_SLOW = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code><Message>injected</Message></Error>'


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--counts", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    up = urllib.parse.urlsplit(a.upstream)
    rng = random.Random(a.seed)
    lock = threading.Lock()
    counts = {"requests": 0, **dict.fromkeys(FAULTS, 0)}

    def pick() -> str | None:
        with lock:
            counts["requests"] += 1
            fault = rng.choice(FAULTS) if rng.random() < a.rate else None
            if fault is not None:
                counts[fault] += 1
                a.counts.write_text(json.dumps(counts))
            return fault

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _proxy(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else None
            fault = pick()
            if fault == "503":
                self.send_response(503)
                self.send_header("content-type", "application/xml")
                self.send_header("content-length", str(len(_SLOW)))
                self.end_headers()
                self.wfile.write(_SLOW)
                return
            if fault == "reset":
                self.close_connection = True
                return
            if fault == "slow":
                time.sleep(1.5)
            conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=120)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            finally:
                conn.close()
            if fault == "lost-answer":
                self.close_connection = True
                return
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                    self.send_header(k, v)
            # a HEAD answer says the object's length, not the (empty) body's
            length = r.getheader("content-length") if self.command == "HEAD" else None
            self.send_header("content-length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

    a.counts.write_text(json.dumps(counts))
    serve(Handler, a.port)


if __name__ == "__main__":
    main()
