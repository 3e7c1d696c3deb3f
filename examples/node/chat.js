'use strict';
// A herd worker that talks on the primary/worker channel (docs/protocol.md),
// Node 20, no npm packages. examples/python/chat.py behaves identically.
//
//   herd run -w 2 -- node examples/node/chat.js
//
// It answers the primary's herd.hello, says herd.ready and broadcasts
// {"hello":ID}; prints "got from=F data=JSON" for every message relayed from
// another worker and reports it to the primary as {"type":"got"}; answers
// {"type":"ping","data":X} with {"type":"pong","data":X}; on herd.shutdown
// prints "shutdown" and exits 0; when the channel closes it exits 0.

const net = require('node:net');

const fdText = process.env.HERD_IPC_FD;
if (fdText === undefined) {
  console.error('chat: HERD_IPC_FD is not set: run me under herd');
  process.exit(2);
}
// Node cannot set close-on-exec on an inherited fd (it has no fcntl), so a
// process started with child_process inherits the channel: close it there
// (e.g. sh -c 'exec N>&-; exec prog'), or start none while it is open.
let sock;
try {
  if (!/^\d+$/.test(fdText)) throw new Error();
  sock = new net.Socket({ fd: Number(fdText), readable: true, writable: true });
} catch {
  console.error(`chat: HERD_IPC_FD=${fdText} is not a file descriptor`);
  process.exit(2);
}
delete process.env.HERD_IPC_FD; // our children must not take the channel for theirs
// Backpressure: when the kernel buffer is full, write() queues and returns
// false; stop reading (and so answering) until the queue has drained.
const send = (msg) => sock.write(JSON.stringify(msg) + '\n') || sock.pause();
sock.on('drain', () => sock.resume());
const utf8 = new TextDecoder('utf-8', { fatal: true });
let pending = []; // chunks of the line not yet ended by '\n'
let stopping = false;

function handle(msg) {
  const data = msg.data === undefined ? null : msg.data;
  switch (msg.type) {
    case 'herd.hello': {
      const id = msg.id ?? (Number.parseInt(process.env.HERD_WORKER_ID, 10) || 0);
      send({ type: 'herd.hello', v: 1 });
      send({ type: 'herd.ready' });
      send({ type: 'herd.broadcast', data: { hello: id } });
      break;
    }
    case 'herd.message':
      console.log(`got from=${JSON.stringify(msg.from ?? null)} data=${JSON.stringify(data)}`);
      send({ type: 'got', data: { from: msg.from ?? null, data } });
      break;
    case 'ping':
      send({ type: 'pong', data });
      break;
    case 'herd.shutdown':
      stopping = true;
      console.log('shutdown'); // stdout is a pipe under herd: written synchronously
      setTimeout(() => process.exit(0), 1000).unref(); // if the primary stops reading
      sock.end(() => process.exit(0)); // once everything written is in the socket
      break;
    default: // other user types and unknown herd.* types
  }
}

function line(buf) {
  let msg;
  try {
    msg = JSON.parse(utf8.decode(buf));
  } catch {}
  if (msg === null || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.type !== 'string') {
    console.error(`chat: ignored a line that is not a JSON object with a string type (${buf.length} bytes)`);
    return;
  }
  handle(msg);
}

sock.on('data', (chunk) => {
  let start = 0;
  for (let nl; !stopping && (nl = chunk.indexOf(10, start)) !== -1; start = nl + 1) {
    pending.push(chunk.subarray(start, nl));
    line(pending.length === 1 ? pending[0] : Buffer.concat(pending));
    pending = [];
  }
  if (!stopping && start < chunk.length) pending.push(chunk.subarray(start));
});
sock.on('end', () => {
  if (stopping) return;
  console.error('primary gone'); // a last line without '\n' is incomplete: dropped
  process.exit(0);
});
sock.on('error', (err) => {
  if (err.code === 'ECONNRESET' || err.code === 'EPIPE') {
    if (!stopping) console.error('primary gone');
    process.exit(0);
  }
  console.error(`chat: channel: ${err.message}`);
  process.exit(1);
});
