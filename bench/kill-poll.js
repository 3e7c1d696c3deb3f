'use strict';
// kill -9 one worker and time how long until the port answers from its
// replacement; a helper of bench/reload.sh. No npm packages.
//
//   node bench/kill-poll.js PORT VICTIM_PID SURVIVOR_PID
//
// Sends SIGKILL to VICTIM_PID, then opens a new connection to
// 127.0.0.1:PORT every POLL_MS milliseconds (at most 16 pending), each
// sending one "GET /" with "Connection: close". The rate is fixed, not
// "the next one as soon as the last one settled": a closed loop loads the
// machine in proportion to how fast the surviving worker answers, and that
// load slows the replacement's start-up, so the cluster that serves best
// during the gap would be timed worst. It stops at the first
// answer from a pid that is neither VICTIM_PID nor SURVIVOR_PID (hello.js
// answers "hello from worker N pid P"), lets the connections still pending
// finish or time out, and prints one line:
//
//   ms=147.3 pid=12345 tries=52 ok=51 refused=0 reset=0 hung=0 other=0
//
// ms: from the kill to that answer. ok: answers (from any pid); refused:
// ECONNREFUSED; reset: the connection was reset or closed without a full
// answer; hung: no answer within HANG_MS; other: any other error or
// status (named on stderr). Exits 1 if no new pid answered within MAX_MS.
//
// Environment: HANG_MS=1000, MAX_MS=10000, POLL_MS=1.

const net = require('node:net');

const [port, victim, survivor] = process.argv.slice(2).map(Number);
if (!(port > 0 && victim > 0 && survivor > 0)) {
  console.error('usage: node bench/kill-poll.js PORT VICTIM_PID SURVIVOR_PID');
  process.exit(2);
}
const hangMs = Number(process.env.HANG_MS ?? 1000);
const maxMs = Number(process.env.MAX_MS ?? 10_000);
const pollMs = Number(process.env.POLL_MS ?? 1);
const request = Buffer.from('GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n');

const count = { tries: 0, ok: 0, refused: 0, reset: 0, hung: 0, other: 0 };
let pending = 0;
let found = null; // { ms, pid }
let t0 = 0n;

const elapsed = () => Number(process.hrtime.bigint() - t0) / 1e6;

function finish() {
  if (pending > 0) return;
  clearInterval(ticker);
  clearTimeout(deadline);
  const c = count;
  const line = `pid=${found?.pid ?? 0} tries=${c.tries} ok=${c.ok} refused=${c.refused} reset=${c.reset} hung=${c.hung} other=${c.other}`;
  if (found) {
    console.log(`ms=${found.ms.toFixed(1)} ${line}`);
  } else {
    console.log(`ms=none ${line}`);
    console.error(`kill-poll.js: no new pid answered within ${maxMs} ms`);
    process.exitCode = 1;
  }
}

function attempt() {
  count.tries++;
  pending++;
  const chunks = [];
  let settled = false;
  const sock = net.connect({ port, host: '127.0.0.1' });
  const done = (kind, detail) => {
    if (settled) return;
    settled = true;
    clearTimeout(timer);
    sock.destroy();
    count[kind]++;
    if (kind === 'other') console.error(`kill-poll.js: ${detail}`);
    pending--;
    if (found || stopped) finish();
  };
  const timer = setTimeout(() => done('hung'), hangMs);
  sock.on('connect', () => sock.write(request));
  sock.on('data', (b) => chunks.push(b));
  sock.on('error', (err) => {
    if (err.code === 'ECONNREFUSED') done('refused');
    else if (err.code === 'ECONNRESET' || err.code === 'EPIPE') done('reset');
    else done('other', err.code ?? err.message);
  });
  sock.on('close', () => {
    const text = Buffer.concat(chunks).toString();
    const m = /\bpid (\d+)/.exec(text);
    if (!text) return done('reset');
    if (!text.startsWith('HTTP/1.1 200') || !m) return done('other', `unexpected answer: ${JSON.stringify(text.slice(0, 80))}`);
    const pid = Number(m[1]);
    if (!found && pid !== victim && pid !== survivor) found = { ms: elapsed(), pid };
    done('ok');
  });
}

let stopped = false;
function next() {
  if (!found && !stopped && pending < 16) attempt();
}

const ticker = setInterval(next, pollMs);
const deadline = setTimeout(() => {
  stopped = true;
  finish();
}, maxMs);

try {
  t0 = process.hrtime.bigint();
  process.kill(victim, 'SIGKILL');
} catch (err) {
  console.error(`kill-poll.js: kill ${victim}: ${err.message}`);
  process.exit(1);
}
attempt();
