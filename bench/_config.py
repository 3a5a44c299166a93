"""What one bench run measures, and how big."""

from __future__ import annotations

import msgspec

PHASES = ("latency", "throughput", "memory", "trigger", "poll", "scale", "ui")
# Run only when --phases names them.
OPTIONAL_PHASES = ("soak",)


class Config(msgspec.Struct, frozen=True, kw_only=True):
    quick: bool = False
    phases: tuple[str, ...] = PHASES
    gateway_workers: int = 2
    tenants: int = 4
    # latency: jobs submitted one at a time at `rate` for `latency_seconds`, to idle parked workers
    rate: float = 100.0
    latency_seconds: float = 10.0
    latency_workers: int = 4
    latency_concurrency: int = 10
    safety_poll_seconds: float | None = None  # None: the gateway's default
    # throughput: `jobs` submitted in batches, then drained
    jobs: int = 20_000
    batch: int = 1000
    submitters: int = 4
    drain_workers: int = 3
    drain_runners: int = 1
    drain_concurrency: int = 100
    # memory: long-polls parked on the gateway at once
    parked_polls: int = 1000
    # scale: `scale_rows` finished jobs and `scale_waiting` waiting ones inserted with SQL over
    # `seed_connections` connections; then `scale_tenants` tenants with work waiting against
    # `scale_tenants_base` of them
    leases: int = 500
    scale_rows: int = 1_000_000
    scale_waiting: int = 100_000
    background_tenants: int = 20
    seed_connections: int = 2
    scale_tenants: int = 10_000
    scale_tenants_base: int = 10
    # drains on the empty table and on the loaded one, each; the scale ratios use their medians
    scale_drains: int = 3
    # ui: timed GETs of each console page, on the table the scale phase seeds
    ui_requests: int = 20
    # soak: a steady submit-and-drain load with finished jobs and events kept `soak_retain_seconds`
    soak_seconds: float = 120.0
    soak_rate: float = 1000.0
    soak_retain_seconds: int = 5
    soak_workers: int = 2
    soak_naptime_seconds: int = 1  # autovacuum_naptime on the bench's own server; 0: as it is
    profile: bool = False
    # Drain without ANALYZE first: with plans the gateways cached while the table was small.
    burst: bool = False
    # ALTER DATABASE … SET for the run's database, as "name=value" (what-if experiments)
    db_settings: tuple[str, ...] = ()


def quick(base: Config) -> Config:
    return msgspec.structs.replace(
        base,
        quick=True,
        latency_seconds=3.0,
        jobs=5000,
        leases=200,
        scale_rows=100_000,
        scale_waiting=10_000,
        scale_tenants=1000,
        scale_drains=1,
    )
