"""``weightvault ui``: the dashboard on this machine's loopback, for the user who starts it.

It binds 127.0.0.1 (a free port unless one is given), prints the URL with a one-time start token
on standard output once it listens, and serves until SIGINT/SIGTERM. Plain HTTP is allowed only
on a loopback address: from another machine, reach it through an SSH tunnel
(``ssh -L 9898:127.0.0.1:9898 host``).
"""

from __future__ import annotations

import secrets
import sys
import webbrowser

from weightvault.errors import UsageError
from weightvault.netaddr import is_loopback, listen_socket
from weightvault.web.app import make_app
from weightvault.web.site import Site

__all__ = ["new_start_token", "serve_ui"]


def new_start_token() -> str:
    return secrets.token_urlsafe(32)


def serve_ui(site: Site, token: str, *, host: str = "127.0.0.1", port: int = 0, open_browser: bool = False) -> None:
    """Serve ``site`` until interrupted. UsageError for a non-loopback address or a port in use."""
    import uvicorn  # only the ui command needs the ASGI server

    if not is_loopback(host):
        raise UsageError(f"refusing to serve the dashboard on {host}: it is plain HTTP and for this machine only",
                         hint="listen on 127.0.0.1 and reach it through an SSH tunnel"
                         " (ssh -L 9898:127.0.0.1:9898 this-host)")
    try:
        sock = listen_socket(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="pick another port with --listen 127.0.0.1:PORT, or 0 for a free one") from None
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    url = f"http://{shown}:{bound_port}/?token={token}"
    config = uvicorn.Config(make_app(site), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    print(f"dashboard at {url}", flush=True)
    print("the link works once (it opens a session in the browser that follows it); Ctrl-C stops the dashboard",
          file=sys.stderr, flush=True)
    if open_browser:
        webbrowser.open(url)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
