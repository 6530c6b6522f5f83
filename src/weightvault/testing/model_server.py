"""A small real model server for failover tests: it loads a safetensors file and answers
``GET /health`` with ``{"status": "healthy", "model_sha256": <SHA-256 of the file>}`` and
``POST /predict`` with the sum of the first tensor's row 0 times the input list. The file is
loaded again whenever it changes (a ``restore --swap`` of its directory), as a server that
reloads its model would.

    python -m weightvault.testing.model_server --weights model.safetensors --mode-file MODE

Prints ``listening on http://127.0.0.1:PORT`` once it listens. The first line of ``MODE`` (re-read
at every request) injects a fault: ``ok``; ``500``; ``hang`` (sleep 30 s before answering);
``slow`` (answer after 0.3 s); ``flap`` (every other request 500); ``wrong`` (report another
SHA-256); ``unhealthy`` (``status: "unhealthy"``). A region that is down is a killed process.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from weightvault.testing._http import serve

__all__ = ["main"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", type=Path, required=True)
    ap.add_argument("--mode-file", type=Path, required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    loaded: dict[str, object] = {}  # the weights as last loaded, reloaded when the file changes
    counter = itertools.count()

    def model() -> tuple[str, np.ndarray] | None:
        try:
            st = a.weights.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if loaded.get("key") != key:
            data = a.weights.read_bytes()
            loaded.update(key=key, sha=hashlib.sha256(data).hexdigest(), first=next(iter(load_file(str(a.weights))
                                                                                        .values())))
        return str(loaded["sha"]), np.asarray(loaded["first"])

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            mode = a.mode_file.read_text().split("\n", 1)[0].strip() if a.mode_file.exists() else "ok"
            if mode == "hang":
                time.sleep(30)
            if mode == "slow":
                time.sleep(0.3)
            if mode == "500" or (mode == "flap" and next(counter) % 2):
                self._send(500, {"error": "injected"})
                return
            m = model()
            if m is None:
                self._send(503, {"status": "unhealthy", "error": "no model file"})
                return
            status = "unhealthy" if mode == "unhealthy" else "healthy"
            self._send(200, {"status": status, "model_sha256": "0" * 64 if mode == "wrong" else m[0]})

        def do_POST(self) -> None:
            n = int(self.headers.get("content-length", "0"))
            xs = np.asarray(json.loads(self.rfile.read(n) or b"[]"), dtype=np.float64)
            m = model()
            if m is None:
                self._send(503, {"error": "no model file"})
                return
            row = np.asarray(m[1], dtype=np.float64).reshape(-1)[: len(xs)]
            self._send(200, {"y": float((row * xs).sum())})

    serve(Handler, a.port)


if __name__ == "__main__":
    main()
