#!/usr/bin/env node
// node producer.mjs [--queue Q] [--kind K] [--max-attempts N] [--wait] [--timeout-ms N] [PAYLOAD_JSON ...]
// Submits one job per payload (default: one `{}`) in one batch, and prints each job as a JSON
// line; with --wait, waits for each to end and prints it as it ended. The gateway and key come
// from ORCH_URL and ORCH_API_KEY.

import { parseArgs } from 'node:util';

import { Client, Producer } from './client.mjs';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    queue: { type: 'string' },
    kind: { type: 'string' },
    'max-attempts': { type: 'string' },
    wait: { type: 'boolean', default: false },
    'timeout-ms': { type: 'string', default: '60000' },
  },
});

const { ORCH_URL: url, ORCH_API_KEY: apiKey } = process.env;
if (!url || !apiKey) {
  console.error('producer: set ORCH_URL and ORCH_API_KEY');
  process.exit(2);
}

const producer = new Producer(new Client(url, apiKey));
const jobs = (positionals.length ? positionals : ['{}']).map((raw) => {
  const job = { payload: JSON.parse(raw) };
  // Only the fields given: the server's defaults apply to the rest.
  if (values.queue) job.queue = values.queue;
  if (values.kind) job.kind = values.kind;
  if (values['max-attempts']) job.max_attempts = Number(values['max-attempts']);
  return job;
});

const submitted = await producer.submitMany(jobs);
const timeoutMs = Number(values['timeout-ms']);
for (const job of submitted) {
  console.log(JSON.stringify(values.wait ? await producer.wait(job.id, { timeoutMs }) : job));
}
