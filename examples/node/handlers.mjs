// Example handlers, chosen by the job's `kind`. A handler gets the leased job (id, payload,
// attempts, ...) and { signal }, and returns the job's result; throwing fails the attempt.

import { setTimeout as sleep } from 'node:timers/promises';

import { JobError } from './client.mjs';

export const handlers = {
  greet: async (job) => ({ greeting: `hello ${job.payload.name}` }),
  // Outlives its lease unless heartbeats renew it; stops early when the signal aborts.
  sleep: async (job, { signal }) => {
    await sleep(job.payload.ms, undefined, { signal });
    return { slept_ms: job.payload.ms };
  },
  fail: async (job) => {
    throw new JobError(job.payload.error ?? 'failed on purpose', { retryable: job.payload.retryable ?? true });
  },
};

export default async function handle(job, ctx) {
  const handler = handlers[job.kind];
  if (handler === undefined) throw new JobError(`no handler for kind ${JSON.stringify(job.kind)}`, { retryable: false });
  return handler(job, ctx);
}
