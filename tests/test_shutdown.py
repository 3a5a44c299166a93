"""Stopping `orchestrator serve` with clients attached: every parked long-poll answers at once,
streams close, in-flight work finishes, and the process exits promptly without a traceback."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import msgspec
import pytest

from core import signing

from .conftest import ADMIN_TOKEN
from .support import Api, GatewayProcess, eventually

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

PARKED = 200


async def _parked(session: aiohttp.ClientSession, url: str) -> float:
    async with session.get(url + "/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith("orch_parked_long_polls"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _signed(
    session: aiohttp.ClientSession, url: str, key: str, method: str, path: str, body: object = None
) -> tuple[int, bytes]:
    raw = b"" if body is None else msgspec.json.encode(body)
    headers = {**signing.sign_headers(key, method, path, raw), "Content-Type": "application/json"}
    async with session.request(method, url + path, data=raw or None, headers=headers) as r:
        return r.status, await r.read()


async def test_sigterm_answers_parked_long_polls_at_once_and_exits_cleanly(database_url: str) -> None:
    gw = GatewayProcess(database_url, ADMIN_TOKEN)
    try:
        await gw.wait_ready()
        api = Api(gw.url, ADMIN_TOKEN)
        key = await api.tenant("acme")
        await api.close()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            lease = {"worker_id": "w", "wait_ms": 30_000}
            polls = [
                asyncio.create_task(_signed(session, gw.url, key, "POST", "/v1/workers/lease", lease))
                for _ in range(PARKED)
            ]
            events = asyncio.create_task(_signed(session, gw.url, key, "GET", "/v1/events?wait_ms=30000"))
            stream_headers = signing.sign_headers(key, "GET", "/v1/events/stream", b"")

            async def read_stream() -> bytes:
                async with session.get(gw.url + "/v1/events/stream", headers=stream_headers) as r:
                    assert r.status == 200
                    return await r.read()  # returns once the server closes the stream

            stream = asyncio.create_task(read_stream())

            async def all_parked() -> bool:
                return await _parked(session, gw.url) >= PARKED

            await eventually(all_parked, timeout=30, every=0.1)
            t0 = time.monotonic()
            gw.kill(signal.SIGTERM)
            answers = await asyncio.wait_for(asyncio.gather(*polls), 10)
            answered_in = time.monotonic() - t0
            event_status, event_body = await asyncio.wait_for(events, 5)
            streamed = await asyncio.wait_for(stream, 5)
        exit_code = await asyncio.to_thread(gw.proc.wait, 10)
        exited_in = time.monotonic() - t0
    finally:
        output = gw.stop()
    print(f"{PARKED} parked polls answered in {answered_in:.3f} s; process exited in {exited_in:.3f} s")
    assert {status for status, _ in answers} == {200}, output
    assert all(msgspec.json.decode(body)["jobs"] == [] for _, body in answers)
    assert event_status == 200 and msgspec.json.decode(event_body)["events"] == []
    assert streamed.startswith(b"retry:")
    assert answered_in < 1.0 and exited_in < 2.0, output
    assert exit_code == 0, output
    assert "Traceback" not in output and "timeout graceful shutdown exceeded" not in output, output
