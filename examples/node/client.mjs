// A Job Orchestrator client for Node >= 20, written from docs/protocol.md with nothing but
// Node's standard library: request signing, a producer, and a worker loop.

import { createHash, createHmac, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

export const EMPTY_BODY_SHA256 = createHash('sha256').update('').digest('hex');
const TERMINAL = new Set(['succeeded', 'dead', 'cancelled']);
const RETRYABLE_STATUS = new Set([429, 502, 503, 504]);
const MAX_WAIT_MS = 60_000;
const MAX_ACK_ITEMS = 1000;

// --- signing -------------------------------------------------------------------------------

/** `<key_id>.<secret>` -> { keyId, secret }. */
export function splitApiKey(apiKey) {
  const dot = apiKey.indexOf('.');
  if (dot <= 0 || dot === apiKey.length - 1) throw new Error('an API key has the form <key_id>.<secret>');
  return { keyId: apiKey.slice(0, dot), secret: apiKey.slice(dot + 1) };
}

/** The five lines the signature covers; `body` is the exact bytes sent (a string is UTF-8). */
export function stringToSign(method, pathQs, timestamp, nonce, body) {
  const bytes = typeof body === 'string' ? Buffer.from(body, 'utf8') : body;
  const bodyHash = bytes.length ? createHash('sha256').update(bytes).digest('hex') : EMPTY_BODY_SHA256;
  return [method.toUpperCase(), pathQs, timestamp, nonce, bodyHash].join('\n');
}

export function signature(secret, method, pathQs, timestamp, nonce, body) {
  return createHmac('sha256', Buffer.from(secret, 'utf8'))
    .update(stringToSign(method, pathQs, timestamp, nonce, body), 'utf8')
    .digest('hex');
}

/** The four headers that authenticate one request. `now` (unix seconds) and `nonce` are for tests. */
export function signHeaders(apiKey, method, pathQs, body, { now, nonce } = {}) {
  const { keyId, secret } = splitApiKey(apiKey);
  const timestamp = String(Math.floor(now ?? Date.now() / 1000));
  const n = nonce ?? randomBytes(16).toString('hex');
  return {
    'X-Key-Id': keyId,
    'X-Timestamp': timestamp,
    'X-Nonce': n,
    'X-Signature': signature(secret, method, pathQs, timestamp, n, body),
  };
}

// --- errors and backoff --------------------------------------------------------------------

/** An answer that is not 2xx; `problem` is the problem document when there was one. */
export class ApiError extends Error {
  constructor(status, problem, retryAfterMs) {
    super(`HTTP ${status}: ${problem?.detail ?? problem?.title ?? 'error'}`);
    this.name = 'ApiError';
    this.status = status;
    this.problem = problem;
    this.field = problem?.field ?? null;
    this.retryAfterMs = retryAfterMs;
  }
}

/** The gateway could not be reached, or the connection broke or timed out. */
export class TransportError extends Error {
  constructor(message, cause) {
    super(message, { cause });
    this.name = 'TransportError';
  }
}

/** Worth trying again later: 429, 503 (and a proxy's 502/504), or a transport failure. */
export function isTransient(err) {
  return err instanceof TransportError || (err instanceof ApiError && RETRYABLE_STATUS.has(err.status));
}

/** Exponential backoff with jitter (100 ms doubling to 5 s), never sooner than Retry-After. */
export function backoffMs(failures, err) {
  const ceiling = Math.min(5000, 100 * 2 ** Math.min(Math.max(failures, 1) - 1, 16));
  const delay = ceiling * (0.5 + Math.random() / 2);
  const retryAfter = err instanceof ApiError ? err.retryAfterMs : null;
  return retryAfter == null ? delay : Math.max(delay, Math.min(retryAfter, 30_000));
}

function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const at = Date.parse(value); // the HTTP-date form
  return Number.isNaN(at) ? null : Math.max(0, at - Date.now());
}

function isAbort(err) {
  return err?.name === 'AbortError';
}

async function pause(ms, signal) {
  try {
    await sleep(ms, undefined, { signal });
  } catch (err) {
    if (!isAbort(err)) throw err;
  }
}

// --- transport -----------------------------------------------------------------------------

export function queryString(query) {
  const parts = [];
  for (const [k, v] of Object.entries(query ?? {})) {
    if (v !== undefined && v !== null) parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(String(v))}`);
  }
  return parts.join('&');
}

export function jobPath(id, action) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  return action ? `${path}/${action}` : path;
}

/** Signed JSON requests to one gateway. */
export class Client {
  constructor(url, apiKey, { timeoutMs = 30_000 } = {}) {
    splitApiKey(apiKey); // a malformed key fails here, not on the first request
    const u = new URL(url);
    this.origin = u.origin;
    this.prefix = u.pathname.replace(/\/+$/, '');
    this.apiKey = apiKey;
    this.timeoutMs = timeoutMs;
  }

  /** One signed request; resolves to the parsed answer (null for 204), throws ApiError or TransportError. */
  async request(method, path, { body, query, signal, timeoutMs } = {}) {
    const qs = queryString(query);
    const pathQs = `${this.prefix}${path}${qs ? `?${qs}` : ''}`;
    // Serialise once: these exact bytes are hashed and sent.
    const raw = body === undefined ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body), 'utf8');
    const headers = { ...signHeaders(this.apiKey, method, pathQs, raw), Accept: 'application/json' };
    if (raw.length) headers['Content-Type'] = 'application/json';
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(new TransportError(`${method} ${path}: timed out`)), timeoutMs ?? this.timeoutMs);
    const onAbort = () => ctl.abort(signal.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    let res;
    let text;
    try {
      res = await fetch(this.origin + pathQs, { method, headers, body: raw.length ? raw : undefined, signal: ctl.signal, redirect: 'manual' });
      text = await res.text();
    } catch (err) {
      if (signal?.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' });
      if (ctl.signal.reason instanceof TransportError) throw ctl.signal.reason;
      throw new TransportError(`${method} ${path}: ${err.cause?.code ?? err.message}`, err);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
    const json = (res.headers.get('content-type') ?? '').includes('json');
    if (res.status < 200 || res.status > 299) {
      let problem = null;
      if (json) {
        try {
          problem = JSON.parse(text);
        } catch {
          // a proxy's page, not a problem document
        }
      }
      throw new ApiError(res.status, problem ?? { detail: text.slice(0, 500) }, parseRetryAfter(res.headers.get('retry-after')));
    }
    if (res.status === 204 || text === '') return null;
    return JSON.parse(text);
  }
}

// --- producer ------------------------------------------------------------------------------

/** Submits and reads jobs with a tenant key. */
export class Producer {
  constructor(client, { retries = 5 } = {}) {
    this.client = client;
    this.retries = retries;
  }

  // 429/503 mean the request was not carried out; a broken connection only is safe to resend
  // when a repeat cannot double anything (reads, or a submit with an idempotency key).
  async #call(method, path, options, resendable) {
    for (let failures = 1; ; failures++) {
      try {
        return await this.client.request(method, path, options);
      } catch (err) {
        const again = err instanceof ApiError ? isTransient(err) : err instanceof TransportError && resendable;
        if (!again || failures > this.retries) throw err;
        await pause(backoffMs(failures, err));
      }
    }
  }

  /** One job; `options` are the optional submit fields (queue, kind, priority, delay_ms, ...). */
  submit(payload, options = {}) {
    return this.#call('POST', '/v1/jobs', { body: { payload, ...options } }, options.idempotency_key != null);
  }

  /** Up to 1000 submit bodies, all or nothing; the jobs in the same order. */
  async submitMany(jobs) {
    const resendable = jobs.every((j) => j.idempotency_key != null);
    return (await this.#call('POST', '/v1/jobs/batch', { body: { jobs } }, resendable)).jobs;
  }

  get(id, { waitMs = 0 } = {}) {
    const query = waitMs ? { wait_ms: waitMs } : undefined;
    return this.#call('GET', jobPath(id), { query, timeoutMs: waitMs + this.client.timeoutMs }, true);
  }

  /** Long-polls until the job is terminal; resolves to it, or to its last state at the timeout. */
  async wait(id, { timeoutMs = 60_000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      const job = await this.get(id, { waitMs: Math.max(0, Math.min(left, MAX_WAIT_MS)) });
      if (TERMINAL.has(job.state) || left <= 0) return job;
    }
  }
}

// --- worker --------------------------------------------------------------------------------

/** What a handler throws to end a job's attempt; `retryable: false` ends it dead. */
export class JobError extends Error {
  constructor(message, { retryable = true, retryInMs } = {}) {
    super(message);
    this.name = 'JobError';
    this.retryable = retryable;
    this.retryInMs = retryInMs;
  }
}

/**
 * Leases jobs, runs `handler(job, { signal })` for each (at most `concurrency` at once),
 * heartbeats them every `leaseSeconds / 3`, and reports outcomes in batches through
 * POST /v1/workers/ack. The handler's return value is the job's result; a thrown error fails
 * the attempt (retried unless its `retryable` is false). `signal` aborts when the lease is
 * lost, when the job is cancelled, and at the shutdown deadline.
 */
export class Worker {
  constructor(client, handler, options = {}) {
    this.client = client;
    this.handler = handler;
    this.workerId = options.workerId ?? `node-${process.pid}-${randomBytes(3).toString('hex')}`;
    this.queues = options.queues ?? ['default'];
    this.concurrency = options.concurrency ?? 1;
    this.leaseSeconds = options.leaseSeconds ?? 30;
    this.waitMs = options.waitMs ?? 30_000;
    this.ackBatch = Math.min(options.ackBatch ?? this.concurrency, MAX_ACK_ITEMS);
    this.ackFlushMs = options.ackFlushMs ?? 5;
    this.shutdownTimeoutMs = options.shutdownTimeoutMs ?? 30_000;
    this.log = options.log ?? ((msg) => console.error(`worker ${this.workerId}: ${msg}`));
    this.held = new Map(); // job id -> entry, for every lease held: running or awaiting its ack
    this.active = 0; // handlers running
    this.pending = []; // entries whose outcome waits to be acknowledged
    this.stopping = false;
    this.stopCtl = new AbortController();
    this.flushTimer = null;
    this.flushing = null;
    this.slotFreed = null;
    this.tasks = new Set(); // the running handlers' promises
  }

  /** Stop leasing now (the parked long-poll is abandoned); `run()` then drains and returns. */
  stop() {
    this.stopping = true;
    this.stopCtl.abort();
    this.slotFreed?.();
  }

  /** Leases and runs jobs until `stop()`; rejects (after draining) when a lease is refused for good. */
  async run() {
    try {
      await this.#leaseLoop();
    } finally {
      this.stopping = true;
      await this.#drain();
    }
  }

  async #leaseLoop() {
    let failures = 0;
    while (!this.stopping) {
      const room = this.concurrency - this.active;
      if (room <= 0) {
        await new Promise((resolve) => {
          this.slotFreed = resolve;
        });
        this.slotFreed = null;
        continue;
      }
      let jobs;
      try {
        const body = { worker_id: this.workerId, queues: this.queues, max_jobs: room, wait_ms: this.waitMs, lease_seconds: this.leaseSeconds };
        ({ jobs } = await this.client.request('POST', '/v1/workers/lease', {
          body,
          signal: this.stopCtl.signal,
          timeoutMs: this.waitMs + 15_000,
        }));
      } catch (err) {
        if (isAbort(err)) break;
        if (!isTransient(err)) throw err; // a rejected key or a bad request does not heal
        failures += 1;
        this.log(`lease failed (${err.message}); retrying`);
        await pause(backoffMs(failures, err), this.stopCtl.signal);
        continue;
      }
      failures = 0;
      for (const job of jobs) this.#start(job);
    }
  }

  #start(job) {
    const entry = { job, ctl: new AbortController(), outcome: null, beat: null, beating: false };
    this.held.set(job.id, entry);
    this.active += 1;
    entry.beat = setInterval(() => this.#heartbeat(entry), (this.leaseSeconds * 1000) / 3);
    const task = this.#runHandler(entry);
    this.tasks.add(task);
    task.finally(() => this.tasks.delete(task));
  }

  async #runHandler(entry) {
    const { job } = entry;
    let outcome;
    try {
      const result = await this.handler(job, { signal: entry.ctl.signal });
      outcome = { complete: { id: job.id, lease_token: job.lease_token, result: result ?? null } };
    } catch (thrown) {
      // An aborted handler usually throws an AbortError: report why it was aborted instead.
      const err = entry.ctl.signal.aborted ? entry.ctl.signal.reason : thrown;
      const fail = { id: job.id, lease_token: job.lease_token, error: String(err?.message ?? err).slice(0, 65_536) };
      if (err?.retryable === false) fail.retryable = false;
      if (Number.isInteger(err?.retryInMs)) fail.retry_in_ms = err.retryInMs;
      outcome = { fail };
    }
    this.active -= 1;
    this.slotFreed?.();
    if (!this.held.has(job.id)) return; // the lease was lost meanwhile: nothing to report
    entry.outcome = outcome;
    this.pending.push(entry);
    this.#scheduleFlush();
  }

  async #heartbeat(entry) {
    // Once its outcome is on its way, a beat could only race the ack (and lose with a 409).
    if (entry.beating || (entry.outcome !== null && this.flushing)) return;
    entry.beating = true;
    const { job } = entry;
    try {
      const beat = await this.client.request('POST', jobPath(job.id, 'heartbeat'), {
        body: { lease_token: job.lease_token, extend_seconds: this.leaseSeconds },
      });
      if (beat.cancel_requested && !entry.ctl.signal.aborted && entry.outcome === null) {
        this.log(`job ${job.id} cancelled: stopping its handler`);
        entry.ctl.abort(new JobError('cancelled', { retryable: false }));
      }
    } catch (err) {
      if (err instanceof ApiError && (err.status === 409 || err.status === 404)) {
        this.#lost(entry, err.status);
      } else {
        // The lease still has two thirds of its time: the next beat may well get through.
        this.log(`heartbeat of job ${job.id} failed (${err.message})`);
      }
    } finally {
      entry.beating = false;
    }
  }

  /** 409/404: another worker holds the job now, or it has ended. Drop it, report nothing. */
  #lost(entry, status) {
    if (!this.held.delete(entry.job.id)) return;
    clearInterval(entry.beat);
    this.log(`job ${entry.job.id} lease lost (${status}): dropped`);
    entry.ctl.abort(new JobError('lease lost'));
    const i = this.pending.indexOf(entry);
    if (i >= 0) this.pending.splice(i, 1);
  }

  #scheduleFlush() {
    if (this.flushing) return; // the running flush looks again when it ends
    if (this.pending.length >= this.ackBatch) {
      clearTimeout(this.flushTimer);
      this.flushTimer = null;
      this.flushing = this.#flush();
    } else if (this.flushTimer === null) {
      this.flushTimer = setTimeout(() => {
        this.flushTimer = null;
        if (!this.flushing) this.flushing = this.#flush();
      }, this.ackFlushMs);
    }
  }

  /** Sends pending outcomes until none is left; transient failures are retried until `giveUpAt`. */
  async #flush(giveUpAt = Infinity) {
    let failures = 0;
    try {
      while (this.pending.length) {
        const batch = this.pending.slice(0, MAX_ACK_ITEMS);
        const body = {
          complete: batch.filter((e) => e.outcome.complete).map((e) => e.outcome.complete),
          fail: batch.filter((e) => e.outcome.fail).map((e) => e.outcome.fail),
        };
        let answer;
        try {
          answer = await this.client.request('POST', '/v1/workers/ack', { body });
        } catch (err) {
          if (!isTransient(err) || Date.now() > giveUpAt) {
            // Not something a resend fixes (or no time left): give the jobs up; their leases
            // run out and they are retried.
            this.log(`ack failed (${err.message}): ${batch.length} outcome(s) dropped`);
            for (const e of batch) this.#forget(e);
            continue;
          }
          failures += 1;
          this.log(`ack failed (${err.message}); retrying`);
          await pause(backoffMs(failures, err));
          continue;
        }
        failures = 0;
        const byId = new Map(batch.map((e) => [e.job.id, e]));
        for (const r of answer.results) {
          const e = byId.get(r.id);
          if (!e) continue;
          if (r.status === 200) this.#forget(e);
          else this.#lost(e, r.status);
        }
        for (const e of batch) this.#forget(e); // anything the answer did not name
      }
    } finally {
      this.flushing = null;
    }
  }

  #forget(entry) {
    clearInterval(entry.beat);
    this.held.delete(entry.job.id);
    const i = this.pending.indexOf(entry);
    if (i >= 0) this.pending.splice(i, 1);
  }

  async #drain() {
    const deadline = Date.now() + this.shutdownTimeoutMs;
    const overtime = new AbortController();
    const all = Promise.allSettled([...this.tasks]);
    await Promise.race([all, pause(this.shutdownTimeoutMs, overtime.signal)]);
    overtime.abort();
    if (this.active > 0) {
      this.log(`${this.active} job(s) still running at the shutdown deadline: interrupting`);
      for (const e of this.held.values()) {
        if (e.outcome === null) e.ctl.abort(new JobError('worker shutting down'));
      }
      await Promise.allSettled([...this.tasks]);
    }
    clearTimeout(this.flushTimer);
    this.flushTimer = null;
    const giveUpAt = Math.max(deadline, Date.now()) + 10_000;
    while (this.flushing || this.pending.length) {
      await (this.flushing ?? (this.flushing = this.#flush(giveUpAt)));
    }
    for (const e of this.held.values()) clearInterval(e.beat);
    this.held.clear();
  }
}
