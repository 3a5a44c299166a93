"""`just bench`: latency and throughput of the Job Orchestrator, measured end to end on loopback.

`python -m bench` starts PostgreSQL (embedded, or a fresh database on `DATABASE_URL`), gateway
processes and SDK worker processes, measures, prints a table, writes
`bench/results/<UTC timestamp>.json`, and stops everything it started.
"""

from ._cli import main

__all__ = ["main"]
