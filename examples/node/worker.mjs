#!/usr/bin/env node
// node worker.mjs [--handler module.mjs] [--queues a,b] [--concurrency N] [--lease-seconds N]
//                 [--wait-ms N] [--worker-id ID]
// The gateway and key come from ORCH_URL and ORCH_API_KEY. SIGTERM or SIGINT stops leasing,
// lets running jobs finish and reports them; a second one exits at once.

import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { Client, Worker } from './client.mjs';

const { values } = parseArgs({
  options: {
    handler: { type: 'string' },
    queues: { type: 'string', default: 'default' },
    concurrency: { type: 'string', default: '4' },
    'lease-seconds': { type: 'string', default: '30' },
    'wait-ms': { type: 'string', default: '30000' },
    'worker-id': { type: 'string' },
    'shutdown-timeout-ms': { type: 'string', default: '30000' },
  },
});

const { ORCH_URL: url, ORCH_API_KEY: apiKey } = process.env;
if (!url || !apiKey) {
  console.error('worker: set ORCH_URL and ORCH_API_KEY');
  process.exit(2);
}

const module = await import(values.handler ? pathToFileURL(resolve(values.handler)).href : './handlers.mjs');
const worker = new Worker(new Client(url, apiKey), module.default, {
  workerId: values['worker-id'],
  queues: values.queues.split(',').filter(Boolean),
  concurrency: Number(values.concurrency),
  leaseSeconds: Number(values['lease-seconds']),
  waitMs: Number(values['wait-ms']),
  shutdownTimeoutMs: Number(values['shutdown-timeout-ms']),
});

let signals = 0;
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    signals += 1;
    if (signals > 1) process.exit(1);
    worker.log(`${sig}: stopping`);
    worker.stop();
  });
}

worker.log(`leasing from ${worker.queues.join(',')} at ${url}`);
try {
  await worker.run();
  worker.log('stopped');
} catch (err) {
  worker.log(`giving up: ${err.message}`);
  process.exitCode = 1;
}
