'use strict';
// Node's own cluster IPC (process.send / worker.send, the default 'json'
// serialization), the baseline for herd's primary/worker channel. No npm
// packages. One primary, one worker.
//
//   MSGS=1000000 RTT=20000 node bench/node-ipc.js
//
// 1. One way: the worker sends MSGS messages {type:'n', data:i} as fast as
//    the channel takes them; the primary counts them and reports the rate
//    from the first message received to the last.
// 2. Round trip: the worker sends {type:'ping', data:i}, the primary answers
//    {type:'pong', data:i} with worker.send, and the worker waits for the
//    answer before the next ping: 2000 warm-up rounds, then RTT measured
//    ones (process.hrtime.bigint()); median and p99 by nearest rank.
//
// stdout is exactly these three lines, for bench scripts to parse:
//   oneway_msgs_per_s <messages per second, integer>
//   rtt_median_us <microseconds, one decimal>
//   rtt_p99_us <microseconds, one decimal>
// Anything else goes to stderr. Exit status 0, 1 on failure, 2 on bad input.

const cluster = require('node:cluster');

const WARMUP = 2000;

function count(name, fallback) {
  const text = process.env[name];
  if (text === undefined || text === '') return fallback;
  const n = Number(text.replaceAll('_', ''));
  if (!Number.isSafeInteger(n) || n < 2) {
    console.error(`node-ipc.js: ${name} must be an integer >= 2, not ${text}`);
    process.exit(2);
  }
  return n;
}

const MSGS = count('MSGS', 1_000_000);
const ROUNDS = count('RTT', 20_000);
// PHASE=oneway or rtt runs one measurement only, in a fresh process (so
// that the round trips do not run in the one-way flood's aftermath).
const PHASE = process.env.PHASE || 'both';

if (cluster.isPrimary) {
  const worker = cluster.fork();
  if (PHASE === 'rtt') worker.once('online', () => worker.send({ type: 'rtt' }));
  let received = 0;
  let first = 0n;
  let done = false;
  worker.on('message', (m) => {
    switch (m.type) {
      case 'n': {
        const now = process.hrtime.bigint();
        if (received++ === 0) first = now;
        if (received === MSGS) {
          const rate = (MSGS - 1) / (Number(now - first) / 1e9);
          process.stdout.write(`oneway_msgs_per_s ${Math.round(rate)}\n`);
          if (PHASE === 'oneway') {
            done = true;
            worker.disconnect();
          } else {
            worker.send({ type: 'rtt' });
          }
        }
        break;
      }
      case 'ping':
        worker.send({ type: 'pong', data: m.data });
        break;
      case 'result':
        process.stdout.write(`rtt_median_us ${m.median.toFixed(1)}\nrtt_p99_us ${m.p99.toFixed(1)}\n`);
        done = true;
        worker.disconnect(); // the worker exits once its channel closes
        break;
      default:
        console.error(`node-ipc.js: unexpected message ${JSON.stringify(m)}`);
    }
  });
  worker.on('exit', (code, signal) => {
    if (!done) {
      console.error(`node-ipc.js: the worker died (${signal ?? code}) after ${received} messages`);
      process.exit(1);
    }
    process.exit(0);
  });
} else {
  // One way. Backpressure: process.send() writes at once while the pipe has
  // room, else queues the message in the worker and returns false once
  // 128 KiB or more are queued. So: send in a plain loop until send()
  // returns false, give the next message a callback (run once that message,
  // and so everything queued before it, has been written) and go on from
  // that callback. At most ~128 KiB wait in the worker. This was the fastest
  // of the approaches measured here (2 cores, Node 20.20, 1M messages, three
  // runs each): this one 410-460k/s; setImmediate batches of 100 (with a
  // wait for a callback when send() returned false) 350-445k/s; batches of
  // 1000, 365-455k/s; a callback on every send with 1 or 16 in flight,
  // 360-390k/s; a callback on every 1000th (100th) send with at most 4
  // batches in flight, 235-300k/s (295-300k/s).
  let i = 0;
  const pump = () => {
    while (i < MSGS) {
      if (!process.send({ type: 'n', data: i++ })) {
        if (i < MSGS) process.send({ type: 'n', data: i++ }, pump);
        return;
      }
    }
  };

  // Round trip: each pong sends the next ping.
  const times = new Float64Array(ROUNDS);
  let round = 0;
  let sent = 0n;
  const ping = () => {
    sent = process.hrtime.bigint();
    process.send({ type: 'ping', data: round });
  };
  process.on('message', (m) => {
    if (m.type === 'rtt') {
      ping();
    } else if (m.type === 'pong') {
      const rtt = Number(process.hrtime.bigint() - sent) / 1000; // µs
      if (m.data !== round) throw new Error(`pong ${m.data} for ping ${round}`);
      if (round >= WARMUP) times[round - WARMUP] = rtt;
      if (++round < WARMUP + ROUNDS) return ping();
      times.sort();
      const rank = (p) => times[Math.ceil(p * ROUNDS) - 1];
      process.send({ type: 'result', median: rank(0.5), p99: rank(0.99) });
    }
  });
  if (PHASE !== 'rtt') pump();
}
