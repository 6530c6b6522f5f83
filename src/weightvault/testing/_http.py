"""What the small test servers share: serve a handler on 127.0.0.1 and say where."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["serve"]


def serve(handler: type[BaseHTTPRequestHandler], port: int = 0) -> None:
    """Serve ``handler`` on 127.0.0.1:``port`` (0: a free one) until killed, after printing
    ``listening on http://127.0.0.1:PORT`` (what the tests read to find it)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()
