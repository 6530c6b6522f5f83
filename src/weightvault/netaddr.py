"""Small facts about network addresses, and the listening socket, that the listeners (server,
agent metrics, dashboard) share."""

from __future__ import annotations

import ipaddress
import socket

__all__ = ["is_loopback", "listen_socket"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``localhost``, an IPv4 or IPv6 literal) names only this machine; any other
    name is False (it could resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` (0: a free port) and listening, inheritable (uvicorn
    serves it). OSError if it cannot be bound (the caller says what to do)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(512)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
