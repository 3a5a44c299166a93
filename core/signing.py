"""The request signing scheme of docs/protocol.md, shared by the gateway and the SDK."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time

HEADER_KEY_ID = "X-Key-Id"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"
MAX_SKEW_SECONDS = 300

NONCE_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}\Z")
EMPTY_BODY_SHA256 = hashlib.sha256(b"").hexdigest()


def split_api_key(api_key: str) -> tuple[str, str]:
    """`<key_id>.<secret>` -> (key_id, secret)."""
    key_id, sep, secret = api_key.partition(".")
    if not sep or not key_id or not secret:
        raise ValueError("an API key has the form <key_id>.<secret>")
    return key_id, secret


def new_api_key(prefix: str) -> tuple[str, str]:
    """A fresh (key_id, secret) pair; the key id starts with `prefix`."""
    return f"{prefix}_{secrets.token_hex(8)}", secrets.token_urlsafe(32)


def string_to_sign(method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    body_hash = hashlib.sha256(body).hexdigest() if body else EMPTY_BODY_SHA256
    return "\n".join((method.upper(), path_qs, timestamp, nonce, body_hash)).encode()


def signature(secret: str, method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> str:
    msg = string_to_sign(method, path_qs, timestamp, nonce, body)
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def sign_headers(api_key: str, method: str, path_qs: str, body: bytes, *, now: float | None = None) -> dict[str, str]:
    """The four headers that authenticate one request."""
    key_id, secret = split_api_key(api_key)
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(18)
    return {
        HEADER_KEY_ID: key_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: signature(secret, method, path_qs, timestamp, nonce, body),
    }


def verify(secret: str, expected_hex: str, method: str, path_qs: str, timestamp: str, nonce: str, body: bytes) -> bool:
    """Constant-time comparison of the presented signature with the computed one."""
    computed = signature(secret, method, path_qs, timestamp, nonce, body)
    return hmac.compare_digest(computed.encode(), expected_hex.encode())


# Outbound webhooks: the gateway signs each delivery with the endpoint's secret.
WEBHOOK_ID_HEADER = "X-Orch-Webhook-Id"
WEBHOOK_EVENT_ID_HEADER = "X-Orch-Event-Id"
WEBHOOK_TIMESTAMP_HEADER = "X-Orch-Timestamp"
WEBHOOK_SIGNATURE_HEADER = "X-Orch-Signature"


def webhook_signature(secret: str, timestamp: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256(secret, `<timestamp>.<body>`)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
