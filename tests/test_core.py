"""The pure domain: states, signing and backoff (the state machine is tested in test_transitions.py)."""

from __future__ import annotations

import random

import msgspec
import pytest

from core import TERMINAL, JobState, backoff_ceiling_ms, backoff_ms, is_terminal, signing
from core.wire import JobSubmit, LeaseRequest

pytestmark = pytest.mark.timeout(10)


def test_terminal_states() -> None:
    assert {s.value for s in TERMINAL} == {"succeeded", "dead", "cancelled"}
    assert [s.value for s in JobState if not is_terminal(s)] == ["scheduled", "ready", "running"]


def test_signature_follows_the_documented_string_to_sign() -> None:
    body = b'{"payload":{}}'
    sts = signing.string_to_sign("post", "/v1/jobs?x=1", "1700000000", "n" * 16, body)
    import hashlib

    assert sts == b"\n".join(
        [b"POST", b"/v1/jobs?x=1", b"1700000000", b"n" * 16, hashlib.sha256(body).hexdigest().encode()]
    )
    empty = signing.string_to_sign("GET", "/v1/jobs/1", "1", "n" * 16, b"")
    assert empty.endswith(hashlib.sha256(b"").hexdigest().encode())
    sig = signing.signature("secret", "POST", "/v1/jobs", "1", "n" * 16, body)
    assert signing.verify("secret", sig, "POST", "/v1/jobs", "1", "n" * 16, body)
    assert not signing.verify("secret", sig, "POST", "/v1/jobs", "1", "n" * 16, body + b" ")
    assert not signing.verify("other", sig, "POST", "/v1/jobs", "1", "n" * 16, body)


def test_sign_headers_round_trip() -> None:
    key_id, secret = signing.new_api_key("tk")
    headers = signing.sign_headers(f"{key_id}.{secret}", "POST", "/v1/x", b"{}", now=123)
    assert headers[signing.HEADER_KEY_ID] == key_id
    assert headers[signing.HEADER_TIMESTAMP] == "123"
    assert signing.NONCE_RE.match(headers[signing.HEADER_NONCE])
    assert signing.verify(
        secret, headers[signing.HEADER_SIGNATURE], "POST", "/v1/x", "123", headers[signing.HEADER_NONCE], b"{}"
    )
    with pytest.raises(ValueError, match="key_id"):
        signing.split_api_key("no-dot")


def test_backoff_grows_exponentially_and_caps() -> None:
    assert [backoff_ceiling_ms(a, 100, 10_000) for a in range(1, 9)] == [100, 200, 400, 800, 1600, 3200, 6400, 10_000]
    assert backoff_ceiling_ms(500, 100, 10_000) == 10_000
    rng = random.Random(7)
    draws = [backoff_ms(3, 100, 10_000, rng.random()) for _ in range(2000)]
    assert min(draws) >= 0 and max(draws) < 400
    # Full jitter: uniform over [0, ceiling), so the mean sits near half the ceiling.
    assert 180 < sum(draws) / len(draws) < 220
    with pytest.raises(ValueError, match="1-based"):
        backoff_ceiling_ms(0, 100, 1000)


def test_wire_validation_names_fields() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.max_jobs"):
        msgspec.json.decode(b'{"worker_id":"w","max_jobs":0}', type=LeaseRequest)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"payload":{},"delay":5}', type=JobSubmit)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.run_at"):
        msgspec.json.decode(b'{"run_at":"2026-01-01T00:00:00"}', type=JobSubmit)
