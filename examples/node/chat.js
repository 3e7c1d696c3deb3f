'use strict';
// A herd worker that talks on its channel (docs/protocol.md), Node without
// packages; examples/python/chat.py is the same worker in Python.
//
//   herd run -w 2 -- node examples/node/chat.js
//
// It greets the other workers with herd.broadcast, prints what they say and
// reports it to the primary as {"type":"got"}, answers {"type":"ping"} with
// {"type":"pong"} and the same data, and exits 0 on herd.shutdown or when
// the primary is gone (the channel ends).
const net = require('node:net');
const readline = require('node:readline');

if (process.env.HERD_IPC_FD === undefined) {
  console.error('chat.js: HERD_IPC_FD is not set: run me under herd');
  process.exit(2);
}
// Node cannot mark the fd close-on-exec: start no child process while it is open.
const chan = new net.Socket({ fd: Number(process.env.HERD_IPC_FD), readable: true, writable: true });
delete process.env.HERD_IPC_FD; // programs we start must not take the channel
const me = Number(process.env.HERD_WORKER_ID);
// One JSON object per line. A full socket buffer pauses reading (and so
// answering) until it drains: backpressure instead of a growing queue.
const send = (msg) => chan.write(JSON.stringify(msg) + '\n') || chan.pause();
chan.on('drain', () => chan.resume());
chan.on('error', () => process.exit(0)); // a reset: the primary is gone

send({ type: 'herd.hello', v: 1 }); // "I speak the protocol": stop me with herd.shutdown
send({ type: 'herd.ready' });
send({ type: 'herd.broadcast', data: { hello: me } });
const lines = readline.createInterface({ input: chan, crlfDelay: Infinity });
lines.on('close', () => process.exit(0)); // the primary closed the channel
lines.on('line', (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return; } // not JSON: never sent by the primary; ignore it
  if (msg.type === 'herd.message') { // relayed from worker msg.from
    console.log(`worker ${me} got ${JSON.stringify(msg.data)} from worker ${msg.from}`);
    send({ type: 'got', data: { from: msg.from, data: msg.data } });
  } else if (msg.type === 'ping') {
    send({ type: 'pong', data: msg.data });
  } else if (msg.type === 'herd.shutdown') {
    chan.end(() => process.exit(0)); // once all we wrote is in the socket
  }
});
