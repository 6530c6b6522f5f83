"""Where a routing decision goes: one small interface, ``apply(routing)``, raising
``ActuatorError`` when the routing could not be put in place (the controller records that and
tries again at its next round).

* ``WeightsFile``: the routing as JSON ``{"region": weight}``, replaced atomically (temp file,
  fsync, rename, directory fsync), then an optional reload command (``nginx -s reload``).
* ``Route53Weighted``: one weighted record per region (``SetIdentifier`` = the region's name,
  its value from ``route53_value``), all UPSERTed in one change batch so Route 53 applies them
  together; a region without traffic gets weight 0.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from weightvault.paths import atomic_write

__all__ = ["Actuator", "ActuatorError", "Route53Weighted", "WeightsFile"]


class ActuatorError(Exception):
    """The routing could not be put in place; the message says what failed."""


class Actuator(Protocol):
    def apply(self, routing: Mapping[str, int]) -> None: ...


class WeightsFile:
    def __init__(self, path: Path, reload: tuple[str, ...] = ()) -> None:
        self.path, self.reload = path, reload

    def apply(self, routing: Mapping[str, int]) -> None:
        try:
            atomic_write(self.path, (json.dumps(dict(routing), sort_keys=True) + "\n").encode(), 0o644)
        except OSError as exc:
            raise ActuatorError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        if self.reload:
            try:
                subprocess.run(list(self.reload), check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as exc:
                raise ActuatorError(f"the routing was written but {' '.join(self.reload)} failed: {exc}") from None


class Route53Weighted:
    def __init__(self, zone: str, name: str, rtype: str, ttl: int, values: Mapping[str, str],
                 endpoint: str | None = None) -> None:
        self.zone, self.name, self.rtype, self.ttl, self.values = zone, name, rtype, ttl, dict(values)
        self.endpoint = endpoint
        self._client: Any = None

    def _route53(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("route53", endpoint_url=self.endpoint)
        return self._client

    def apply(self, routing: Mapping[str, int]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        changes = [{"Action": "UPSERT", "ResourceRecordSet": {
            "Name": self.name, "Type": self.rtype, "SetIdentifier": region, "Weight": int(routing.get(region, 0)),
            "TTL": self.ttl, "ResourceRecords": [{"Value": value}]}} for region, value in sorted(self.values.items())]
        try:
            self._route53().change_resource_record_sets(HostedZoneId=self.zone, ChangeBatch={
                "Comment": "weightvault failover: " + ", ".join(f"{k}={v}" for k, v in sorted(routing.items())),
                "Changes": changes})
        except (BotoCoreError, ClientError) as exc:
            raise ActuatorError(f"Route 53 refused the change of {self.name} in zone {self.zone}: {exc}") from None
