'use strict';
// Node's own cluster module running examples/node/hello.js, the baseline
// for bench/http.sh. No npm packages.
//
//   WORKERS=2 PORT=8080 SCHED=rr|none node bench/node-cluster.js
//
// SCHED=rr (default) is cluster.SCHED_RR: the primary accepts and hands
// connections to workers round-robin. SCHED=none is cluster.SCHED_NONE: the
// workers share the listening socket and the kernel picks who accepts.
// Prints "ready" once every worker is listening; SIGTERM/SIGINT stop it.

const cluster = require('node:cluster');
const path = require('node:path');

const sched = process.env.SCHED ?? 'rr';
if (sched !== 'rr' && sched !== 'none') {
  console.error(`node-cluster.js: SCHED must be rr or none, not ${sched}`);
  process.exit(2);
}
// Must be set before the first fork (and before cluster.setupPrimary).
cluster.schedulingPolicy = sched === 'rr' ? cluster.SCHED_RR : cluster.SCHED_NONE;

const hello = require(path.join(__dirname, '..', 'examples', 'node', 'hello.js'));

if (cluster.isPrimary) {
  const n = Number.parseInt(process.env.WORKERS ?? '2', 10);
  let listening = 0;
  let stopping = false;
  cluster.on('listening', () => {
    if (++listening === n) console.log('ready');
  });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`node-cluster.js: worker ${worker.process.pid} died (${signal ?? code})`);
      process.exitCode = 1;
    }
    if (Object.keys(cluster.workers).length === 0) process.exit();
  });
  const stop = () => {
    stopping = true;
    for (const w of Object.values(cluster.workers)) w.process.kill('SIGTERM');
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  for (let i = 0; i < n; i++) cluster.fork({ HERD_WORKER_ID: String(i), HERD_WORKERS: String(n) });
} else {
  delete process.env.LISTEN_FDS; // always listen on PORT through the cluster primary
  hello.stopOnSignal(hello.listen());
}
