"""A small real HTTP forward proxy, standing for a failover probe vantage point in another
network: it forwards ``GET http://host:port/path`` (absolute-form, as clients send to a proxy)
and answers with what the origin answered.

    python -m weightvault.testing.http_proxy --block-file BLOCKED

Prints ``listening on http://127.0.0.1:PORT`` once it listens. ``BLOCKED`` (re-read at every
request) lists ``host:port`` origins this vantage point cannot reach, one per line (a network
partition seen from here): those get ``502``. An unreachable origin gets ``502`` too, a slow one
``504`` after 5 s.
"""

from __future__ import annotations

import argparse
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from weightvault.testing._http import serve

__all__ = ["main"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--block-file", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: bytes, ctype: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            if url.scheme != "http" or not url.netloc:
                self._answer(400, b"a proxy request needs an absolute http:// URL")
                return
            try:
                blocked = set(a.block_file.read_text().split())
            except FileNotFoundError:
                blocked = set()
            if url.netloc in blocked:
                self._answer(502, f"{url.netloc} cannot be reached from this vantage point".encode())
                return
            try:
                with direct.open(self.path, timeout=5) as r:
                    self._answer(r.status, r.read(), r.headers.get("content-type", "application/octet-stream"))
            except urllib.error.HTTPError as exc:
                self._answer(exc.code, exc.read(), exc.headers.get("content-type", "text/plain"))
            except TimeoutError:
                self._answer(504, b"the origin did not answer in time")
            except (urllib.error.URLError, OSError) as exc:
                self._answer(502, f"origin unreachable: {exc}".encode())

    serve(Handler, a.port)


if __name__ == "__main__":
    main()
