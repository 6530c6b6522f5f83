"""Small facts about network addresses that listeners (server, agent metrics, dashboard) share."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (``localhost``, an IPv4 or IPv6 literal) names only this machine; any other
    name is False (it could resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
