'use strict';
// HTTP hello server fed with connections handed over by herd (Node 20, no npm packages).
//
//   herd run -w 2 --balance round-robin -l 127.0.0.1:8080 -- node examples/node/handoff.js
//
// In --balance round-robin, least-conn and sticky the primary accepts every
// connection itself. For a node command it makes the worker's channel Node's
// own IPC channel (NODE_CHANNEL_FD, JSON serialization) and sends each
// connection as Node sends a handle: process.on('message') gets
// {type:'herd.conn', listener:NAME} and a net.Socket, and Node itself
// acknowledges it (herd counts that as herd.took; until then it keeps its copy
// and gives the connection to another worker if this one dies). The server is
// never listen()ed: each socket is emitted as a 'connection'. Closes are
// reported with herd.closed, a count at a time (--balance least-conn counts
// them).
// herd.shutdown or SIGTERM/SIGINT drain it as hello.js does.

const http = require('node:http');

const body = Buffer.from(`hello from worker ${process.env.HERD_WORKER_ID ?? ''} pid ${process.pid}\n`);
let draining = false;

const server = http.createServer((req, res) => {
  const headers = { 'Content-Type': 'text/plain', 'Content-Length': body.length };
  if (draining) headers.Connection = 'close'; // the client reconnects elsewhere
  res.writeHead(200, headers);
  res.end(body);
});
// Node sets up its connection tracking (closeIdleConnections, the request
// timeouts) on 'listening'; this server never listens, so say it does.
server.emit('listening');

function send(msg) {
  if (process.connected) process.send(msg, () => {}); // with a callback, errors are not thrown
}

// Closes are reported together, once per turn of the event loop: a
// message per connection would cost a write each.
let closed = 0;
function reportClosed() {
  if (closed++ === 0) {
    setImmediate(() => {
      send({ type: 'herd.closed', data: closed });
      closed = 0;
    });
  }
}

process.on('message', (msg, socket) => {
  if (msg && msg.type === 'herd.conn' && socket) {
    socket.once('close', reportClosed);
    socket.setNoDelay(true); // net.Server does it for connections it accepts itself
    server.emit('connection', socket);
  } else if (msg && msg.type === 'herd.shutdown') {
    drain();
  }
});
process.on('disconnect', () => drain()); // the primary is gone

// drain stops taking connections (process.disconnect: herd gives what is
// still on the way to other workers, and the channel no longer holds the
// event loop), answers further requests with "Connection: close" and closes
// the connections still idle after a second; the process then exits by
// itself once the last one is closed (or after 10 s at the latest).
function drain() {
  if (draining) return;
  draining = true;
  if (process.connected) process.disconnect();
  setTimeout(() => server.closeIdleConnections(), 1000).unref();
  setTimeout(() => process.exit(0), 10_000).unref();
}
process.once('SIGTERM', drain);
process.once('SIGINT', drain);

send({ type: 'herd.hello', v: 1 });
send({ type: 'herd.ready' });
