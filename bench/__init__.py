"""`just bench`: latency and throughput of the Job Orchestrator, measured end to end on loopback.

`python -m bench` starts PostgreSQL (embedded, or a fresh database on `DATABASE_URL`), gateway
processes and SDK worker processes, measures, prints a table, writes
`bench/results/<UTC timestamp>.json`, and stops everything it started. `--compare pgqueuer`
measures pgqueuer the same way in the same run.
"""


def main(argv: list[str] | None = None) -> int:
    # Imported here: the worker processes (`bench._agent`, `bench._pgq_agent`) load this package
    # too, and should carry only what a user's worker would.
    from ._cli import main as run

    return run(argv)


__all__ = ["main"]
