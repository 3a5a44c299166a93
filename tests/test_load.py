"""Load a gateway process must hold: a thousand parked long-polls woken by one batch submit all
answer within a second or so, each worker gets only jobs leased for it, and memory stays bounded."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import msgspec
import psutil
import pytest

from core import signing

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

POLLS = 1000


async def _parked(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    line = next((ln for ln in text.splitlines() if ln.startswith("orch_parked_long_polls")), "x 0")
    return float(line.rsplit(" ", 1)[1])


async def test_a_batch_submit_answers_a_thousand_parked_polls_at_once(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, extra_args=["--no-access-log"])
    try:
        await gw.wait_ready(timeout=60)
        api = Api(gw.url, ADMIN_TOKEN)
        key = await api.tenant("load")
        await api.close()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def call(method: str, path: str, body: object) -> tuple[int, bytes, float]:
                raw = msgspec.json.encode(body)
                headers = {**signing.sign_headers(key, method, path, raw), "Content-Type": "application/json"}
                async with session.request(method, gw.url + path, data=raw, headers=headers) as r:
                    return r.status, await r.read(), time.monotonic()

            polls = [
                asyncio.create_task(
                    call("POST", "/v1/workers/lease", {"worker_id": f"w{i}", "wait_ms": 30_000, "max_jobs": 1})
                )
                for i in range(POLLS)
            ]

            async def all_parked() -> bool:
                return await _parked(session, gw.url) >= POLLS

            await eventually(all_parked, timeout=60, every=0.2)
            rss_mib = psutil.Process(gw.proc.pid).memory_info().rss / 2**20
            t0 = time.monotonic()
            status, _, _ = await call("POST", "/v1/jobs/batch", {"jobs": [{"payload": {"i": i}} for i in range(POLLS)]})
            assert status == 201
            answers = await asyncio.wait_for(asyncio.gather(*polls), 30)
    finally:
        gw.stop()
    took = sorted(t - t0 for _, _, t in answers)
    print(
        f"{POLLS} parked polls answered: p50 {took[POLLS // 2]:.3f} s, max {took[-1]:.3f} s; "
        f"gateway RSS with them parked {rss_mib:.0f} MiB"
    )
    leased = [(i, msgspec.json.decode(body)["jobs"]) for i, (_, body, _) in enumerate(answers)]
    ids = [job["id"] for _, jobs in leased for job in jobs]
    assert len(ids) == POLLS and len(set(ids)) == POLLS  # every job once, to one poll each
    assert all(len(jobs) == 1 for _, jobs in leased)
    assert took[-1] < 1.5, took[-1]
    assert rss_mib < 150, rss_mib


async def test_grouped_leases_respect_each_request_and_the_cap(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN, extra_args=["--no-access-log"])
    try:
        await gw.wait_ready(timeout=60)
        api = Api(gw.url, ADMIN_TOKEN)
        try:
            key = await api.tenant("capped", max_inflight=7)
            polls = [
                asyncio.create_task(
                    api.signed(
                        key, "POST", "/v1/workers/lease", {"worker_id": f"w{i % 3}", "wait_ms": 5000, "max_jobs": 3}
                    )
                )
                for i in range(9)
            ]

            async def parked() -> bool:
                return await _parked(api.session, gw.url) >= 9

            await eventually(parked, timeout=30, every=0.1)
            assert (await api.signed(key, "POST", "/v1/jobs/batch", {"jobs": [{"payload": {}}] * 20})).status == 201
            replies = await asyncio.gather(*polls)
        finally:
            await api.close()
    finally:
        gw.stop()
    got = [r.body["jobs"] for r in replies]
    assert all(len(jobs) <= 3 for jobs in got)
    assert sum(len(jobs) for jobs in got) == 7  # the cap, not the 20 ready nor the 27 asked for
    assert len({job["id"] for jobs in got for job in jobs}) == 7
