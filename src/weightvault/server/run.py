"""Run the repository server: uvicorn on a socket this module binds, TLS unless refused.

Plain HTTP is allowed only on a loopback address or with ``insecure_http`` (then the clients'
tokens cross the network in the clear: only behind a TLS-terminating proxy). The bound address is
printed as ``listening on URL`` once the socket accepts connections (port 0 picks a free port).
SIGTERM and SIGINT stop it after the requests in flight.
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import Any

from weightvault.errors import ConfigFileError, UsageError
from weightvault.netaddr import is_loopback, listen_socket
from weightvault.server.app import make_app
from weightvault.server.config import ServerConfig
from weightvault.server.state import ServerState

__all__ = ["serve"]



def _bind(host: str, port: int) -> socket.socket:
    try:
        return listen_socket(host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                         hint="pick a free port in the config's listen (or --listen), or stop what uses it") from None


def _protocol() -> type:
    """uvicorn's h11 protocol, except that at shutdown an idle keep-alive connection is dropped at
    once: closing it would wait for the client's TLS close_notify, which a client idle in its
    connection pool never sends (asyncio waits 30 s). Busy connections still finish their request."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        def shutdown(self) -> None:
            if self.cycle is None or self.cycle.response_complete:
                self.conn.send(h11.ConnectionClosed())
                self.transport.abort()
            else:
                super().shutdown()

    return Protocol


def serve(config: ServerConfig, *, insecure_http: bool = False) -> None:
    """Serve until SIGTERM/SIGINT. UsageError for plain HTTP off loopback, ConfigFileError for a
    TLS certificate or key that cannot be loaded."""
    import uvicorn  # only the serve command needs the ASGI server

    tls = config.tls_cert is not None
    if not tls and not insecure_http and not is_loopback(config.host):
        raise UsageError(f"refusing plain HTTP on {config.host} (tokens and passwords would cross the network in"
                         " the clear)", hint="set tls_cert and tls_key in the config, listen on 127.0.0.1, or pass"
                         " --insecure-http behind a TLS-terminating proxy")
    if tls:
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(config.tls_cert),
                                                                               str(config.tls_key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigFileError(f"cannot load the TLS certificate {config.tls_cert} / key {config.tls_key}: {exc}",
                                  hint="give PEM files the server can read") from None
    dash = config.dashboard
    if dash is not None and not tls and not insecure_http and not is_loopback(dash.host):
        raise UsageError(f"refusing the dashboard over plain HTTP on {dash.host}", hint="set tls_cert and tls_key,"
                         " or listen on 127.0.0.1 under [dashboard]")
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = ServerState(config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    sockets, app = [sock], make_app(state)
    if dash is not None:
        dsock = _bind(dash.host, dash.port)
        sockets.append(dsock)
        app = _by_port(app, _dashboard_app(state), dsock.getsockname()[1])
    ucfg = uvicorn.Config(app, http=_protocol(), log_level="warning", access_log=False, lifespan="off",
                          timeout_keep_alive=30, timeout_graceful_shutdown=30,
                          ssl_certfile=str(config.tls_cert) if tls else None,
                          ssl_keyfile=str(config.tls_key) if tls else None)
    server = uvicorn.Server(ucfg)
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if tls else "http"
    print(f"listening on {scheme}://{shown}:{port}", flush=True)
    if len(sockets) > 1:
        dhost, dport = sockets[1].getsockname()[:2]
        print(f"dashboard on {scheme}://{f'[{dhost}]' if ':' in dhost else dhost}:{dport}", flush=True)
    try:
        server.run(sockets=sockets)
    finally:
        for s in sockets:
            s.close()
        sys.stdout.flush()


def _dashboard_app(state: ServerState) -> Any:
    """The web dashboard for the server's users (``server.dashboard``), on its own port."""
    from weightvault.server.dashboard import DashboardHooks
    from weightvault.web.app import make_app as make_web_app
    from weightvault.web.auth import Sessions
    from weightvault.web.site import Site

    dash = state.config.dashboard
    assert dash is not None
    site = Site({}, Sessions(None), server=DashboardHooks(state), restore_root=dash.restore_root,
                backup_roots=dash.backup_roots)
    return make_web_app(site)


def _by_port(main: Any, other: Any, other_port: int) -> Any:
    """One ASGI app for two listening sockets: requests to ``other_port`` go to ``other``."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        server = scope.get("server")
        await (other if server is not None and server[1] == other_port else main)(scope, receive, send)
    return app
