'use strict';
// An "unmodified" HTTP app that binds $PORT itself (Node 20, no npm packages).
//
//   herd run -w 2 --balance proxy -l 127.0.0.1:8080 -- node examples/node/port.js
//   PORT=9000 node examples/node/port.js        # alone, no herd
//
// This is the kind of app `--balance proxy` is for: it knows nothing of herd
// (no inherited sockets, no LISTEN_FDS, no message channel). It listens on
// $HOST:$PORT (HOST defaults to 127.0.0.1, PORT to 8080); in proxy mode herd
// gives each worker process its own private loopback PORT and proxies client
// connections to it.
//
// Routes (HTTP/1.1, keep-alive):
//   GET /         200 "hello from port PORT pid PID\n"
//   POST /echo    the request body back, streamed with backpressure (PUT
//                 too); Content-Length in, Content-Length out; a chunked
//                 request gets a chunked response. The response starts
//                 before the request has been read, so a client must read
//                 while it sends.
//   GET /bytes/N  N bytes of the pattern i % 251 (i = 0, 1, ...), streamed
//                 with backpressure, with Content-Length: N
// HEAD works for / and /bytes/N.
//
// SIGTERM/SIGINT drain it like examples/node/hello.js: it stops accepting
// (closes its listening socket) without closing idle keep-alive connections
// at once, answers every further request with "Connection: close", closes
// the connections still idle after a second, and exits 0 once every
// connection is closed (10 s at the latest).

const http = require('node:http');
const net = require('node:net');
const { pipeline } = require('node:stream');

const host = process.env.HOST || '127.0.0.1';
const port = Number(process.env.PORT || 8080);
const hello = Buffer.from(`hello from port ${port} pid ${process.pid}\n`);

// 261 periods of the pattern (65511 bytes): every block starts at a multiple
// of 251, so sending it again and again continues the pattern.
const block = Buffer.alloc(251 * 261);
for (let i = 0; i < block.length; i++) block[i] = i % 251;

let draining = false;

function start(res, status, length, type) {
  const headers = { 'Content-Type': type };
  if (length !== undefined) headers['Content-Length'] = length;
  if (draining) headers.Connection = 'close'; // the client reconnects elsewhere
  res.writeHead(status, headers);
}

// sendPattern writes n bytes of the pattern, waiting for 'drain' whenever
// the socket's buffer is full.
function sendPattern(res, n) {
  let left = n;
  const more = () => {
    while (left > 0) {
      const k = Math.min(left, block.length);
      left -= k;
      if (!res.write(k === block.length ? block : block.subarray(0, k))) {
        res.once('drain', more);
        return;
      }
    }
    res.end();
  };
  res.once('close', () => res.removeListener('drain', more));
  more();
}

function handler(req, res) {
  const path = req.url.split('?', 1)[0];
  const method = req.method === 'HEAD' ? 'GET' : req.method;
  let m;
  if (method === 'GET' && path === '/') {
    start(res, 200, hello.length, 'text/plain');
    res.end(req.method === 'HEAD' ? undefined : hello);
  } else if (method === 'GET' && (m = /^\/bytes\/(\d{1,15})$/.exec(path))) {
    const n = Number(m[1]);
    start(res, 200, n, 'application/octet-stream');
    if (req.method === 'HEAD') res.end();
    else sendPattern(res, n);
  } else if ((method === 'POST' || method === 'PUT') && path === '/echo') {
    // With a Content-Length the response has the same one; without (a
    // chunked request) Node sends the response chunked.
    const length = req.headers['content-length'];
    start(res, 200, length, 'application/octet-stream');
    pipeline(req, res, () => {}); // on error both ends are destroyed
  } else {
    const body = Buffer.from('not found\n');
    start(res, 404, body.length, 'text/plain');
    res.end(body); // Node discards an unread request body
  }
}

// noDelay (TCP_NODELAY) is Node's default; said here because it matters:
// without it keep-alive requests wait for the client's delayed ACK.
const server = http.createServer({ noDelay: true }, handler);
server.on('error', (err) => {
  console.error(`port.js: listen ${host}:${port}: ${err.message}`);
  process.exit(1);
});
server.listen(port, host, () => console.error(`port.js: listening on ${host}:${port}`));

// Drain on SIGTERM/SIGINT so that no request fails:
//  - stop accepting, but without http.Server.close(), which in Node 19+ also
//    closes idle keep-alive connections at once and so cuts off the requests
//    clients have already sent on them;
//  - answer every further request with "Connection: close";
//  - close the connections still idle after a second.
function stop() {
  draining = true;
  net.Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => server.closeIdleConnections(), 1000).unref();
  setTimeout(() => process.exit(0), 10_000).unref();
}
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
