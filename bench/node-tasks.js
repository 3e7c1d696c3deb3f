'use strict';
// A task farm on Node's own cluster module, the baseline for herd's task
// distribution (herd map, herd.Pool): trivial tasks, n → 2n, on WORKERS
// workers with at most INFLIGHT tasks in flight per worker. No npm
// packages.
//
//   N=1000000 node bench/node-tasks.js
//
// The primary hands out the tasks {n} for n = 0..N-1 round-robin with
// worker.send (the default 'json' serialization); each worker answers every
// task with process.send({n: 2n}); each answer frees a place on its worker
// for the next task. The primary sums the answers and checks that the sum
// is N*(N-1). The clock runs from the first task sent to the last answer:
// the workers' start-up is left out (the primary waits until every worker
// has said it is listening for tasks).
//
// Backpressure, as in bench/node-ipc.js: worker.send() / process.send()
// write at once while the pipe has room, else queue the message in the
// sender and return false once 128 KiB or more are queued. The in-flight
// bound keeps each direction far below that (256 small messages), but a
// sender still honours it: after a send() that returned false, the next
// message goes with a callback and nothing more is sent on that channel
// until the callback has run.
//
// stdout is exactly one line, for bench scripts to parse:
//   node_tasks_per_s <tasks per second, integer>
// Anything else goes to stderr. Exit status 0, 1 on failure, 2 on bad input.

const cluster = require('node:cluster');

function count(name, fallback, least) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text.replaceAll('_', ''));
  if (!Number.isSafeInteger(n) || n < least) {
    console.error(`node-tasks.js: ${name} must be an integer >= ${least}, not ${text}`);
    process.exit(2);
  }
  return n;
}

const N = count('N', 1_000_000, 1);
const WORKERS = count('WORKERS', 2, 1);
const INFLIGHT = count('INFLIGHT', 256, 1);

// A channel that honours send()'s backpressure: send(m) returns false when
// the message could not go now (call it again after drain).
function channel(send, drain) {
  let full = false; // the last send() returned false
  let waiting = false; // a send with a callback is pending
  const done = () => {
    waiting = false;
    drain();
  };
  return {
    get blocked() { return waiting; },
    send(m) {
      if (waiting) return false;
      if (full) {
        full = false;
        waiting = true;
        send(m, done);
      } else if (!send(m)) {
        full = true;
      }
      return true;
    },
  };
}

if (cluster.isPrimary) {
  let next = 0; // the next task
  let answered = 0;
  let sum = 0;
  let ready = 0;
  let start = 0n;
  let done = false;
  const slots = [];

  // feed gives slot s tasks while it has room and its channel takes them.
  const feed = (s) => {
    while (s.inflight < INFLIGHT && next < N && !s.ch.blocked) {
      s.ch.send({ n: next++ });
      s.inflight++;
    }
  };

  const begin = () => {
    start = process.hrtime.bigint();
    // Round-robin: one task per worker in turn until each is full.
    for (let k = 0; k < INFLIGHT && next < N; k++) {
      for (const s of slots) {
        if (next < N && s.inflight < INFLIGHT && !s.ch.blocked) {
          s.ch.send({ n: next++ });
          s.inflight++;
        }
      }
    }
  };

  const finish = () => {
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const want = N * (N - 1);
    if (sum !== want) {
      console.error(`node-tasks.js: the answers sum to ${sum}, want ${want}`);
      process.exit(1);
    }
    process.stdout.write(`node_tasks_per_s ${Math.round(N / seconds)}\n`);
    done = true;
    for (const s of slots) s.worker.disconnect(); // each exits once its channel closes
  };

  for (let i = 0; i < WORKERS; i++) {
    const worker = cluster.fork();
    const s = { worker, inflight: 0, ch: null };
    s.ch = channel((m, cb) => worker.send(m, cb), () => feed(s));
    slots.push(s);
    worker.on('message', (m) => {
      if (m.ready) {
        if (++ready === WORKERS) begin();
        return;
      }
      sum += m.n;
      s.inflight--;
      if (++answered === N) return finish();
      feed(s);
    });
    worker.on('exit', (code, signal) => {
      if (!done) {
        console.error(`node-tasks.js: worker ${i} died (${signal ?? code}) after ${answered} answers`);
        process.exit(1);
      }
    });
  }
} else {
  // Answers wait in a queue only while the channel is blocked.
  const queue = [];
  const flush = () => {
    while (queue.length > 0 && ch.send(queue[0])) queue.shift();
  };
  const ch = channel((m, cb) => process.send(m, cb), flush);
  process.on('message', (m) => {
    const answer = { n: m.n * 2 };
    if (queue.length > 0 || !ch.send(answer)) queue.push(answer);
  });
  process.send({ ready: true });
}
