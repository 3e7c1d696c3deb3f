'use strict';
// A herd map line worker (Node 20, no packages): each task is a line on
// stdin holding a number n; the answer is a line with 2n, in order.
//
//   seq 1000000 | herd map -w 2 -- node examples/node/double.js
//
// Workers are persistent: this process answers many tasks. Answers to the
// tasks of one chunk of input are written together.

let rest = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  const lines = (rest + chunk).split('\n');
  rest = lines.pop();
  let out = '';
  for (const line of lines) {
    const n = Number(line);
    out += Number.isFinite(n) && line.trim() !== '' ? `${2 * n}\n` : '{"error":"not a number"}\n';
  }
  if (out) process.stdout.write(out);
});
process.stdin.on('end', () => {
  if (rest !== '') {
    const n = Number(rest);
    process.stdout.write(Number.isFinite(n) ? `${2 * n}\n` : '{"error":"not a number"}\n');
  }
});
