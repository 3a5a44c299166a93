"""One check per guarantee, each against the real server the run started, each returning a row."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from sdk import AckComplete, Conflict, EventsClient, JobSubmit, ProducerClient, WorkerClient

from .._infra import BenchError, start_agents, stop_agents
from .._protocol import AgentConfig
from ._postgres import ScratchPostgres
from ._procs import (
    Serve,
    Worker,
    fetch,
    fetchval,
    finished,
    http_500s,
    http_requests,
    ledger,
    metrics,
    signed,
    tenant,
    total,
    until,
    wait_terminal,
)


@dataclass
class Row:
    guarantee: str
    how: str
    figure: str
    result: str  # pass, FAIL or skip


@dataclass
class Run:
    """What every check shares: the database, the gateway (2 processes behind one port), keys."""

    dsn: str
    gw: Serve
    token: str
    folder: Path
    quick: bool
    server: ScratchPostgres | None
    worker_key: str = ""

    @property
    def url(self) -> str:
        return self.gw.url

    async def tenant(self, tenant_id: str, **fields: object) -> str:
        return await tenant(self.url, self.token, tenant_id, **fields)


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


async def submit(
    url: str, key: str, n: int, *, queue: str = "default", payload: dict[str, object] | None = None
) -> None:
    async with ProducerClient(url, api_key=key) as producer:
        batches = [
            [JobSubmit(payload=payload or {}, queue=queue, max_attempts=25) for _ in range(s, min(n, s + 1000))]
            for s in range(0, n, 1000)
        ]
        for group in range(0, len(batches), 4):
            await asyncio.gather(*(producer.submit_many(b) for b in batches[group : group + 4]))


async def drain_loops(url: str, key: str, loops: int, *, max_jobs: int = 10, hold_s: float = 0.0) -> None:
    """`loops` workers leasing and completing until three leases in a row come back empty."""

    async def loop(i: int) -> None:
        async with WorkerClient(url, worker_id=f"verify-{i}", api_key=key) as client:
            empty = 0
            while empty < 3:
                jobs = await client.lease(max_jobs=max_jobs, wait_ms=300)
                if not jobs:
                    empty += 1
                    continue
                empty = 0
                if hold_s:
                    await asyncio.sleep(hold_s)
                await client.ack(complete=[AckComplete(id=j.id, lease_token=j.lease_token) for j in jobs])

    await asyncio.gather(*(loop(i) for i in range(loops)))


async def running_on(dsn: str, worker_id: str) -> list[int]:
    rows = await fetch(dsn, "SELECT id FROM jobs WHERE state = 'running' AND worker_id = $1", worker_id)
    return [r["id"] for r in rows]


# --- the checks -----------------------------------------------------------------------------


async def no_double_claim(run: Run) -> Row:
    n = 2_000 if run.quick else 20_000
    processes, runners = 4, 4
    tenants = [f"claim-{i}" for i in range(4)]
    keys = [await run.tenant(t) for t in tenants]
    await asyncio.gather(*(submit(run.url, k, n // len(keys)) for k in keys))
    configs = [
        AgentConfig(
            name=f"claim-{p}", url=run.url, api_key=run.worker_key, mode="drain", runners=runners, concurrency=25
        )
        for p in range(processes)
    ]
    agents = await start_agents(configs)
    try:
        for a in agents:
            a.go()
        took = await wait_terminal(run.dsn, tenants, n, timeout=600)
    finally:
        reports = await stop_agents(agents)
    led = await ledger(run.dsn, tenants)
    handled = sum(r.handled for r in reports)
    leased = sum(r.leased for r in reports)
    doubles = led.overlapping_leases + led.duplicate_tokens + led.succeeded_twice + max(0, handled - n)
    ok = not led.problems(n) and doubles == 0 and leased == led.started == n
    return Row(
        "no double claim",
        "shared workers drain 4 tenants; every job's job.started events, lease tokens and completions, and the jobs the workers ran",
        f"{doubles} double claims in {led.started:,} leases, {processes * runners} workers, {len(run.gw.worker_pids())} gateways, {n / took:,.0f} jobs/s",
        verdict(ok),
    )


async def lease_expiry_and_fencing(run: Run) -> list[Row]:
    key = await run.tenant("expiry")
    async with (
        ProducerClient(run.url, api_key=key) as producer,
        WorkerClient(run.url, worker_id="silent", api_key=key) as a,
        WorkerClient(run.url, worker_id="rescuer", api_key=key) as b,
    ):
        job = await producer.submit({}, retry_base_ms=0, retry_cap_ms=0)
        (first,) = await a.lease(max_jobs=1, wait_ms=5000, lease_seconds=1)
        t0 = time.monotonic()
        (second,) = await b.lease(max_jobs=1, wait_ms=20_000, lease_seconds=30)
        took = time.monotonic() - t0
        expiry_ok = first.id == second.id == job.id and second.attempts == 2 and took < 1 + 2 * 2 + 2
        fences = total(await metrics(run.url), "orch_fencing_rejections_total")
        refused = 0
        for call in (
            lambda: a.heartbeat(first.id, first.lease_token),
            lambda: a.complete(first.id, first.lease_token, {"by": "silent"}),
            lambda: a.fail(first.id, first.lease_token, "late"),
        ):
            with contextlib.suppress(Conflict):
                await call()
                continue
            refused += 1
        await b.complete(second.id, second.lease_token, {"by": "rescuer"})
        final = await producer.get(job.id)

    async def counted() -> float | None:
        now = total(await metrics(run.url), "orch_fencing_rejections_total")
        return now if now >= fences + refused else None

    with contextlib.suppress(Exception):
        await until(counted, "fencing rejections counted", timeout=5)
    counted_now = total(await metrics(run.url), "orch_fencing_rejections_total") - fences
    successes = await fetchval(
        run.dsn, "SELECT count(*) FROM events WHERE job_id = $1 AND type = 'job.succeeded'", int(job.id)
    )
    fencing_ok = refused == 3 and final.result == {"by": "rescuer"} and successes == 1 and counted_now == 3
    return [
        Row(
            "lease expiry recovery",
            "a worker takes a 1 s lease and goes silent; another worker long-polls for it",
            f"re-leased (attempt {second.attempts}) {took:.1f} s after the lease was taken (reaper every 2 s)",
            verdict(expiry_ok),
        ),
        Row(
            "fencing",
            "the silent worker heartbeats, completes and fails with its stale token after the job was re-leased",
            f"{refused} of 3 stale-token calls refused (409, {counted_now:g} counted), the holder's result kept, {successes} job.succeeded",
            verdict(fencing_ok),
        ),
    ]


async def crash_recovery(run: Run) -> Row:
    n = 12
    key = await run.tenant("crash")
    runs = run.folder / "crash-runs"
    await submit(run.url, key, n, queue="crash", payload={"ms": 1500})
    victim = Worker(run.url, key, "crash-victim", runs, concurrency=6, lease_seconds=2, queues="crash")
    rescuer: Worker | None = None
    try:

        async def busy() -> list[int] | None:
            if victim.proc.poll() is not None:
                raise BenchError(f"the worker exited with {victim.proc.returncode}:\n{victim.output()[-3000:]}")
            ids = await running_on(run.dsn, "crash-victim")
            return ids if len(ids) >= 3 else None

        try:
            await until(busy, "the victim holding jobs", timeout=60)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{victim.output()[-3000:]}") from None
        victim.kill()
        t0 = time.monotonic()
        held = len(await running_on(run.dsn, "crash-victim"))
        rescuer = Worker(run.url, key, "crash-rescuer", runs, concurrency=6, lease_seconds=2, queues="crash")

        async def taken_back() -> bool:
            return not await running_on(run.dsn, "crash-victim")

        await until(taken_back, "the victim's leases taken back", timeout=60)
        back = time.monotonic() - t0
        await wait_terminal(run.dsn, ["crash"], n, timeout=120)
    finally:
        victim.stop()
        if rescuer is not None:
            rescuer.stop()
    led = await ledger(run.dsn, ["crash"], runs)
    ok = not led.problems(n) and led.jobs_never_run == 0 and led.runs <= led.attempts and held > 0
    return Row(
        "crash recovery",
        "kill -9 of an `orchestrator worker` process in the middle of its jobs; another worker is started",
        f"{held} jobs held by the killed worker, taken back in {back:.1f} s; {led.states.get('succeeded', 0)}/{n} succeeded, "
        f"{led.runs} handler runs for {led.attempts} attempts, {led.succeeded_twice} completions twice",
        verdict(ok),
    )


async def idempotency(run: Run) -> Row:
    key = await run.tenant("idem")
    async with (
        ProducerClient(run.url, api_key=key) as producer,
        WorkerClient(run.url, worker_id="idem", api_key=key) as w,
    ):
        jobs = await asyncio.gather(*(producer.submit({"order": 1}, idempotency_key="same-key") for _ in range(50)))
        ids = {j.id for j in jobs}
        batch = await producer.submit_many([JobSubmit(payload={}, idempotency_key="in-batch") for _ in range(3)])
        batch_ids = {j.id for j in batch}
        # Drain the one job, then complete it again and again with the same token.
        (leased,) = await w.lease(max_jobs=1, wait_ms=5000)
        repeats = [await w.complete(leased.id, leased.lease_token, {"r": 1}) for _ in range(3)]
        acked = await w.ack(complete=[AckComplete(id=leased.id, lease_token=leased.lease_token, result={"r": 1})])
        (other,) = await w.lease(max_jobs=1, wait_ms=5000)
        await w.complete(other.id, other.lease_token)
    rows = await fetch(
        run.dsn,
        "SELECT count(*) FILTER (WHERE type = 'job.created') AS created, count(*) FILTER (WHERE type = 'job.succeeded') AS succeeded"
        " FROM events WHERE tenant_id = 'idem'",
    )
    created, succeeded = rows[0]["created"], rows[0]["succeeded"]
    same = all(r.state.value == "succeeded" and r.result == {"r": 1} for r in repeats)
    ok = (
        len(ids) == 1
        and len(batch_ids) == 1
        and created == 2
        and succeeded == 2
        and same
        and acked.results[0].status == 200
    )
    return Row(
        "idempotency",
        "50 concurrent identical submits with one key, a batch repeating a key; one completion sent 4 times (3 complete, 1 ack)",
        f"50 submits → {len(ids)} job, batch of 3 → {len(batch_ids)}; 4 completions → {succeeded - 1} job.succeeded, same answer each time",
        verdict(ok),
    )


async def outbox_order(run: Run) -> Row:
    key = await run.tenant("outbox")
    producers, batches = 4, (5 if run.quick else 15)
    seen: list[tuple[str, str]] = []
    async with EventsClient(run.url, api_key=key) as events:

        async def read() -> None:
            async for e in events.iter(mode="poll", wait_ms=1000):
                seen.append((e.job_id, e.type))

        reader = asyncio.create_task(read())
        try:
            await asyncio.gather(*(submit(run.url, key, batches * 20) for _ in range(producers)))
            await drain_loops(run.url, key, 4)
            expected: int = await fetchval(run.dsn, "SELECT count(*) FROM events WHERE tenant_id = 'outbox'")

            async def caught_up() -> bool:
                return len(seen) >= expected

            with contextlib.suppress(Exception):
                await until(caught_up, "the reader caught up", timeout=30)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    in_db = {
        (str(r["job_id"]), r["type"])
        for r in await fetch(run.dsn, "SELECT job_id, type FROM events WHERE tenant_id = 'outbox'")
    }
    repeated = sum(n - 1 for n in Counter(seen).values() if n > 1)
    skipped = len(in_db - set(seen))
    lifecycle = ("job.created", "job.started", "job.succeeded")
    by_job: dict[str, list[str]] = {}
    for job_id, kind in seen:
        by_job.setdefault(job_id, []).append(kind)
    out_of_order = sum(1 for kinds in by_job.values() if kinds != list(lifecycle))
    ok = not repeated and not skipped and not out_of_order and len(in_db) == producers * batches * 20 * 3
    return Row(
        "outbox order",
        f"a cursor reads GET /v1/events live while {producers} producers submit and 4 workers complete",
        f"{len(seen):,} events read: {skipped} skipped, {repeated} repeated, {out_of_order} jobs' events out of order",
        verdict(ok),
    )


async def fairness(run: Run) -> Row:
    n = 300 if run.quick else 1000
    weights = {"fair-w1": 1, "fair-w2": 2, "fair-w5": 5}
    keys = {t: await run.tenant(t, weight=w) for t, w in weights.items()}
    await asyncio.gather(*(submit(run.url, k, n) for k in keys.values()))
    await drain_loops(run.url, run.worker_key, 8, max_jobs=2)
    # While every tenant still had work: the weight-5 tenant runs out after 8/5 · n leases.
    window = int(n * 8 / 5 * 0.8)
    rows = await fetch(
        run.dsn,
        "SELECT tenant_id FROM events WHERE type = 'job.started' AND tenant_id = ANY($1) ORDER BY id LIMIT $2",
        list(weights),
        window,
    )
    counts = Counter(r["tenant_id"] for r in rows)
    shares = {t: counts[t] / window for t in weights}
    targets = {t: w / sum(weights.values()) for t, w in weights.items()}
    ok = all(abs(shares[t] - targets[t]) <= 0.03 for t in weights)
    return Row(
        "fairness by weight",
        f"8 shared workers drain 3 tenants of weights 1, 2, 5 ({n:,} jobs each); shares of the first {window:,} leases",
        "shares "
        + " / ".join(f"{shares[t]:.3f}" for t in weights)
        + " against "
        + " / ".join(f"{targets[t]:.3f}" for t in weights),
        verdict(ok),
    )


async def inflight_cap(run: Run) -> Row:
    cap, n = 2, 40
    capped = await run.tenant("cap-2", weight=100, max_inflight=cap)
    free = await run.tenant("cap-free", weight=1)
    await submit(run.url, capped, n)
    await submit(run.url, free, n)
    samples: list[int] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append(
                await fetchval(run.dsn, "SELECT count(*) FROM jobs WHERE tenant_id = 'cap-2' AND state = 'running'")
            )
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        await drain_loops(run.url, run.worker_key, 6, max_jobs=1, hold_s=0.05)
    finally:
        stop.set()
        await sampler
    # The same from the outbox: +1 on each start, -1 on each end, in event order.
    in_flight, most = 0, 0
    for r in await fetch(
        run.dsn, "SELECT type FROM events WHERE tenant_id = 'cap-2' AND type <> 'job.created' ORDER BY id"
    ):
        in_flight += 1 if r["type"] == "job.started" else -1
        most = max(most, in_flight)
    done = await finished(run.dsn, ["cap-2", "cap-free"])
    peak = max(samples, default=0)
    ok = peak <= cap and most <= cap and most == cap and done == 2 * n
    return Row(
        "in-flight cap",
        f"6 shared workers, each job held 50 ms; a tenant of weight 100 capped at {cap} beside one of weight 1",
        f"at most {max(peak, most)} in flight for the tenant capped at {cap} ({len(samples)} samples and its events)",
        verdict(ok),
    )


async def cron_exactly_once(run: Run) -> Row:
    fires = 3 if run.quick else 6
    key = await run.tenant("cron")
    status, body = await signed(
        run.url, key, "POST", "/v1/schedules", {"name": "tick", "cron": "* * * * * *", "queue": "cron"}
    )
    if status != 201:
        return Row(
            "cron exactly once", "a schedule every second", f"POST /v1/schedules answered {status}: {body}", "FAIL"
        )

    async def fired() -> int | None:
        n: int = await fetchval(run.dsn, "SELECT count(DISTINCT run_at) FROM jobs WHERE tenant_id = 'cron'")
        return n if n >= fires else None

    await until(fired, f"{fires} fires", timeout=fires + 20)
    await signed(run.url, key, "PATCH", "/v1/schedules/tick", {"paused": True})
    rows = await fetch(
        run.dsn, "SELECT run_at, count(*) AS n FROM jobs WHERE tenant_id = 'cron' GROUP BY run_at ORDER BY run_at"
    )
    await signed(run.url, key, "DELETE", "/v1/schedules/tick")
    duplicates = sum(r["n"] - 1 for r in rows)
    gaps = sum(round((b["run_at"] - a["run_at"]).total_seconds()) - 1 for a, b in itertools.pairwise(rows))
    ok = duplicates == 0 and gaps == 0 and len(rows) >= fires
    return Row(
        "cron exactly once",
        f"a schedule firing every second, run by the scheduler of {len(run.gw.worker_pids())} gateway processes",
        f"{len(rows)} due times → {sum(r['n'] for r in rows)} jobs: {duplicates} duplicates, {gaps} missed",
        verdict(ok),
    )


_DB_COUNTS = """
SELECT count(*) FILTER (WHERE type = 'job.created') AS created,
       count(*) FILTER (WHERE type = 'job.started') AS started,
       count(*) FILTER (WHERE type = 'job.succeeded') AS succeeded
  FROM events
"""


async def observability(run: Run) -> Row:
    last: tuple[dict[str, float], dict[str, float]] = ({}, {})

    async def agree() -> tuple[dict[str, float], dict[str, float]] | None:
        nonlocal last
        m = await metrics(run.url)
        seen = {
            "created": total(m, "orch_jobs_submitted_total") + total(m, "orch_schedule_fires_total"),
            "started": total(m, "orch_jobs_leased_total"),
            "succeeded": total(m, "orch_jobs_succeeded_total"),
        }
        row = (await fetch(run.dsn, _DB_COUNTS))[0]
        truth = {k: float(row[k]) for k in seen}
        gauges = {s: total(m, "orch_db_jobs", state=s) for s in ("ready", "running", "scheduled")}
        states = {
            r["state"]: float(r["n"])
            for r in await fetch(
                run.dsn,
                "SELECT state::text AS state, count(*) AS n FROM jobs WHERE state IN ('ready', 'running', 'scheduled') GROUP BY 1",
            )
        }
        seen.update({f"db_{s}": v for s, v in gauges.items()})
        truth.update({f"db_{s}": states.get(s, 0.0) for s in gauges})
        agreed = seen == truth
        last = (seen, truth)
        return (seen, truth) if agreed else None

    try:
        seen, truth = await until(agree, "/metrics matching the database", timeout=15, every=0.5)
        ok = True
    except Exception:
        seen, truth = last
        ok = False
    differ = {k: (seen[k], truth[k]) for k in seen if seen[k] != truth[k]}
    return Row(
        "observability",
        "the merged /metrics of both processes against the events and jobs tables",
        f"submitted {truth['created']:,.0f}, leased {truth['started']:,.0f}, succeeded {truth['succeeded']:,.0f}, open-job gauges: "
        + ("/metrics = database" if not differ else f"differ {differ}"),
        verdict(ok),
    )


async def database_restart(run: Run) -> Row:
    how = "pg_ctl restart -m fast, then -m immediate, in the middle of a drain by `orchestrator worker` processes"
    if run.server is None:
        return Row("database restart", how, "skipped: the server is DATABASE_URL's, not one this run started", "skip")
    n = 500 if run.quick else 2000
    key = await run.tenant("restart")
    runs = run.folder / "restart-runs"
    await submit(run.url, key, n, queue="restart", payload={"ms": 20})
    workers = [Worker(run.url, key, f"restart-{i}", runs, concurrency=8, queues="restart") for i in range(2)]
    back: dict[str, float] = {}
    try:
        for mode, at in (("fast", n // 4), ("immediate", n // 2)):
            await until(partial(_beyond, run.dsn, at), "progress", timeout=120)
            t0 = time.monotonic()
            await asyncio.to_thread(run.server.restart, mode)
            now = await finished(run.dsn, ["restart"])
            await until(partial(_beyond, run.dsn, now), f"progress after -m {mode}", timeout=60)
            back[mode] = time.monotonic() - t0
        await wait_terminal(run.dsn, ["restart"], n, timeout=120)
    finally:
        for w in workers:
            w.stop()
    led = await ledger(run.dsn, ["restart"], runs)
    ok = not led.problems(n) and led.jobs_never_run == 0 and led.runs <= led.attempts
    return Row(
        "database restart",
        how,
        f"{n:,} jobs: {led.lost} lost, {led.succeeded_twice} completed twice; jobs completing again "
        f"{back['fast']:.1f} s after -m fast, {back['immediate']:.1f} s after -m immediate",
        verdict(ok),
    )


async def _beyond(dsn: str, n: int) -> int | None:
    done = await finished(dsn, ["restart"])
    return done if done > n else None


async def no_500(run: Run) -> Row:
    m = await metrics(run.url)
    errors, requests = http_500s(m), http_requests(m)
    problems = run.gw.problems()
    return Row(
        "no 500",
        'orch_http_request_duration_seconds_count{status="500"} after every check, and the gateway\'s log',
        f"{errors} of {requests:,} requests answered 500; {len(problems)} error lines in the gateway log"
        + (f" (first: {problems[0][:200]})" if problems else ""),
        verdict(errors == 0 and not problems),
    )
