'use strict';
// Node's cluster module running examples/node/hello.js, with the rolling
// restart a Node app has to write itself: the Node baseline for
// bench/reload.sh. No npm packages.
//
//   WORKERS=2 PORT=8080 SCHED=rr|none node bench/node-cluster-reload.js
//
// The primary forks WORKERS workers (HERD_WORKER_ID 0..WORKERS-1) and
// restarts a worker that dies unasked at once, in the same slot. On SIGHUP
// it replaces the workers one at a time: fork the new one, wait for its
// 'listening' event, SIGTERM the old one (hello.js drains: it stops
// accepting, answers further requests with "Connection: close" and closes
// idle connections after a second), wait for its exit (SIGKILL after
// 15 s), next. A SIGHUP during a reload queues one more reload. SCHED is
// as in bench/node-cluster.js (rr, the default: the primary accepts and
// hands connections to workers round-robin). SIGTERM/SIGINT stop it.
//
// It prints to stdout:
//   worker ID pid PID listening
//   worker ID pid PID exited (CODE|SIGNAL)
//   ready                       once the first WORKERS workers listen
//   reloaded in N ms            when a rolling restart is complete, N ms
//                               after its SIGHUP (the old workers have exited)
//   reload failed: WHY          when a new worker died before listening
//                               (the old one keeps serving)

const cluster = require('node:cluster');
const path = require('node:path');

const sched = process.env.SCHED ?? 'rr';
if (sched !== 'rr' && sched !== 'none') {
  console.error(`node-cluster-reload.js: SCHED must be rr or none, not ${sched}`);
  process.exit(2);
}
// Must be set before the first fork (and before cluster.setupPrimary).
cluster.schedulingPolicy = sched === 'rr' ? cluster.SCHED_RR : cluster.SCHED_NONE;

const hello = require(path.join(__dirname, '..', 'examples', 'node', 'hello.js'));

if (cluster.isPrimary) {
  const n = Number.parseInt(process.env.WORKERS ?? '2', 10);
  const slots = new Array(n); // the current worker of each slot
  const retiring = new Set(); // old workers asked to stop by a reload
  let stopping = false;
  let announced = false;
  let reloading = false;
  let queued = null; // start time of a reload asked for during another

  const fork = (id) => {
    const w = cluster.fork({ HERD_WORKER_ID: String(id), HERD_WORKERS: String(n) });
    w.slot = id;
    return w;
  };

  cluster.on('listening', (w) => {
    w.listening = true;
    console.log(`worker ${w.slot} pid ${w.process.pid} listening`);
    if (!announced && slots.every((s) => s?.listening)) {
      announced = true;
      console.log('ready');
    }
  });

  cluster.on('exit', (w, code, signal) => {
    console.log(`worker ${w.slot} pid ${w.process.pid} exited (${signal ?? code})`);
    if (stopping) {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
      return;
    }
    if (retiring.delete(w)) return; // replaced by a reload
    if (slots[w.slot] === w) slots[w.slot] = fork(w.slot); // died unasked
    // Otherwise a reload's new worker that died before listening: the
    // reload says so.
  });

  const once = (w, event) => new Promise((resolve) => w.once(event, resolve));

  const reload = async (t0) => {
    if (reloading) {
      queued ??= t0;
      return;
    }
    reloading = true;
    try {
      for (let id = 0; id < n && !stopping; id++) {
        const fresh = fork(id);
        await new Promise((resolve, reject) => {
          fresh.once('listening', resolve);
          fresh.once('exit', (code, signal) =>
            reject(new Error(`new worker ${fresh.process.pid} exited (${signal ?? code}) before listening`)),
          );
        });
        // The slot's worker now, not at the start: it may have died and been
        // restarted meanwhile.
        const old = slots[id];
        slots[id] = fresh;
        if (old && !old.isDead()) {
          retiring.add(old);
          const gone = once(old, 'exit');
          old.process.kill('SIGTERM');
          const force = setTimeout(() => old.process.kill('SIGKILL'), 15_000);
          await gone;
          clearTimeout(force);
        }
      }
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (!stopping) console.log(`reloaded in ${ms.toFixed(1)} ms`);
    } catch (err) {
      console.log(`reload failed: ${err.message}`);
    }
    reloading = false;
    if (queued !== null && !stopping) {
      const t = queued;
      queued = null;
      reload(t);
    }
  };

  process.on('SIGHUP', () => reload(process.hrtime.bigint()));
  const stop = () => {
    stopping = true;
    const all = Object.values(cluster.workers);
    if (all.length === 0) process.exit(0);
    for (const w of all) w.process.kill('SIGTERM');
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
  for (let id = 0; id < n; id++) slots[id] = fork(id);
} else {
  delete process.env.LISTEN_FDS; // always listen on PORT through the cluster primary
  hello.stopOnSignal(hello.listen());
}
