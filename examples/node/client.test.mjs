// node --test examples/node/ : the signing against vectors.json (computed by core/signing.py,
// which tests/test_protocol.py checks against the same file), and the pure helpers.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import { ApiError, EMPTY_BODY_SHA256, TransportError, backoffMs, isTransient, jobPath, queryString, signHeaders, signature, splitApiKey, stringToSign } from './client.mjs';

const vectors = JSON.parse(readFileSync(new URL('./vectors.json', import.meta.url), 'utf8'));

test('the string to sign and the signature match the Python reference', () => {
  const { secret } = splitApiKey(vectors.api_key);
  assert.ok(vectors.cases.length >= 3);
  for (const c of vectors.cases) {
    assert.equal(stringToSign(c.method, c.path, c.timestamp, c.nonce, c.body), c.string_to_sign, c.name);
    assert.equal(signature(secret, c.method, c.path, c.timestamp, c.nonce, c.body), c.signature, c.name);
    assert.equal(signature(secret, c.method, c.path, c.timestamp, c.nonce, Buffer.from(c.body, 'utf8')), c.signature, c.name);
  }
});

test('signHeaders carries the key id, the timestamp, the nonce and the signature', () => {
  const c = vectors.cases[0];
  const h = signHeaders(vectors.api_key, c.method, c.path, c.body, { now: Number(c.timestamp) + 0.9, nonce: c.nonce });
  assert.deepEqual(h, { 'X-Key-Id': vectors.key_id, 'X-Timestamp': c.timestamp, 'X-Nonce': c.nonce, 'X-Signature': c.signature });
});

test('every request gets a fresh nonce the server accepts', () => {
  const nonces = new Set();
  for (let i = 0; i < 100; i++) {
    const { 'X-Nonce': nonce } = signHeaders(vectors.api_key, 'GET', '/v1/jobs', '');
    assert.match(nonce, /^[A-Za-z0-9_-]{16,64}$/);
    nonces.add(nonce);
  }
  assert.equal(nonces.size, 100);
});

test('a changed byte changes the signature', () => {
  const c = vectors.cases[0];
  const { secret } = splitApiKey(vectors.api_key);
  assert.notEqual(signature(secret, c.method, c.path, c.timestamp, c.nonce, `${c.body} `), c.signature);
  assert.notEqual(signature(secret, c.method, `${c.path}?`, c.timestamp, c.nonce, c.body), c.signature);
  assert.equal(stringToSign('GET', '/v1/jobs', '1', 'n', '').split('\n')[4], EMPTY_BODY_SHA256);
});

test('API keys split at the first dot', () => {
  assert.deepEqual(splitApiKey('tk_1.a.b'), { keyId: 'tk_1', secret: 'a.b' });
  for (const bad of ['nodot', '.secret', 'key.']) assert.throws(() => splitApiKey(bad));
});

test('paths and query strings are encoded as they are signed', () => {
  assert.equal(queryString({ state: 'ready', queue: 'a b', after: undefined, limit: 5 }), 'state=ready&queue=a%20b&limit=5');
  assert.equal(jobPath('42', 'heartbeat'), '/v1/jobs/42/heartbeat');
  assert.equal(jobPath('a/b'), '/v1/jobs/a%2Fb');
});

test('429 and 503 are transient and back off at least Retry-After', () => {
  const busy = new ApiError(503, { detail: 'down' }, 2000);
  assert.ok(isTransient(busy));
  assert.ok(isTransient(new ApiError(429, null, null)));
  assert.ok(isTransient(new TransportError('refused')));
  assert.ok(!isTransient(new ApiError(409, null, null)));
  assert.ok(!isTransient(new ApiError(401, null, null)));
  for (let failures = 1; failures < 5; failures++) assert.ok(backoffMs(failures, busy) >= 2000);
  const plain = backoffMs(1, new TransportError('x'));
  assert.ok(plain >= 50 && plain <= 100, String(plain));
  assert.ok(backoffMs(40, null) <= 5000);
});
