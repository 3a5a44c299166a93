"""Telemetry of a gateway process: metrics and their multi-process merge, logs, tracing.
Imports nothing of routes or services."""
