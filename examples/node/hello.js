'use strict';
// Minimal HTTP hello server that runs as a herd worker (Node 20, no npm packages).
//
//   herd run -w 4 -l 127.0.0.1:8080 -- node examples/node/hello.js
//
// Under herd (or systemd socket activation) the listening sockets arrive as
// fds 3 .. 3+LISTEN_FDS-1 and the server listens on each of them. Without
// LISTEN_FDS it listens on 127.0.0.1:$PORT (default 8080) itself, so the same
// file is the "plain Node app" of the benchmarks. SIGTERM/SIGINT stop it
// gracefully. bench/node-cluster.js reuses handler() and listen() from here.

const http = require('node:http');
const net = require('node:net');

const body = Buffer.from(`hello from worker ${process.env.HERD_WORKER_ID ?? ''} pid ${process.pid}\n`);
let draining = false;

function handler(req, res) {
  const headers = { 'Content-Type': 'text/plain', 'Content-Length': body.length };
  if (draining) headers.Connection = 'close'; // the client reconnects elsewhere
  res.writeHead(200, headers);
  res.end(body);
}

// listen starts one http.Server per inherited fd, or one on host:port when
// LISTEN_FDS is not set. It returns the servers.
function listen({ port = Number(process.env.PORT) || 8080, host = '127.0.0.1' } = {}) {
  const n = Number.parseInt(process.env.LISTEN_FDS ?? '', 10);
  const targets = [];
  if (process.env.LISTEN_FDS !== undefined) {
    if (!(n > 0)) throw new Error(`bad LISTEN_FDS=${process.env.LISTEN_FDS}`);
    if (process.env.LISTEN_PID && Number(process.env.LISTEN_PID) !== process.pid) {
      throw new Error(`LISTEN_PID=${process.env.LISTEN_PID} is not our pid ${process.pid}`);
    }
    for (let fd = 3; fd < 3 + n; fd++) targets.push({ fd });
    // Like sd_listen_fds(unset=1): do not leak these to our own children.
    delete process.env.LISTEN_FDS;
    delete process.env.LISTEN_PID;
    delete process.env.LISTEN_FDNAMES;
  } else {
    targets.push({ port, host });
  }
  return targets.map((t) => {
    const server = http.createServer(handler);
    server.on('error', (err) => {
      console.error(`hello.js: listen ${JSON.stringify(t)}: ${err.message}`);
      process.exit(1);
    });
    server.listen(t);
    return server;
  });
}

// stopOnSignal drains the servers on SIGTERM/SIGINT so that no request
// fails during a rolling reload, and exits once every connection is closed
// (or after 10 s at the latest):
//  - stop accepting, but without http.Server.close(), which in Node 19+
//    also closes idle keep-alive connections at once and so cuts off the
//    requests clients have already sent on them (herd keeps the listening
//    socket, so new connections go to other workers or the replacement);
//  - answer every further request with "Connection: close";
//  - close the connections still idle after a second.
function stopOnSignal(servers) {
  const stop = () => {
    draining = true;
    let open = servers.length;
    for (const s of servers) {
      net.Server.prototype.close.call(s, () => {
        if (--open === 0) process.exit(0);
      });
    }
    setTimeout(() => servers.forEach((s) => s.closeIdleConnections()), 1000).unref();
    setTimeout(() => process.exit(0), 10_000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

module.exports = { handler, listen, stopOnSignal };

if (require.main === module) {
  stopOnSignal(listen());
}
