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
    config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    state = ServerState(config)
    sock = _bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    ucfg = uvicorn.Config(make_app(state), http=_protocol(), log_level="warning", access_log=False, lifespan="off",
                          timeout_keep_alive=30, timeout_graceful_shutdown=30,
                          ssl_certfile=str(config.tls_cert) if tls else None,
                          ssl_keyfile=str(config.tls_key) if tls else None)
    server = uvicorn.Server(ucfg)
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on {'https' if tls else 'http'}://{shown}:{port}", flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        sys.stdout.flush()
