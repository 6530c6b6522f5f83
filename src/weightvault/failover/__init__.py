"""Failover of model serving between regions (docs/FAILOVER.md): probes, a pure decision state
machine with damped failback, routing actuators, and the controller loop."""
