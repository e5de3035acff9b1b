// An application on Node's built-in `http` server that reports every request it receives. Plain
// Node 20, no npm packages, the server at its defaults.
//
//   node upstream_node.mjs REPORT_FILE
//
// It listens on 127.0.0.1 on a free port. When ready it prints exactly one JSON line on stdout:
//
//   {"base_url": "http://127.0.0.1:PORT", "pid": PID}
//
// For every request, once its body has ended and before it answers, it appends one JSON line to
// REPORT_FILE with what Node gave the application, unchanged:
//
//   {"server": "node http", "request_line": `${req.method} ${req.url} HTTP/${req.httpVersion}`,
//    "path": ..., "query": ..., "headers": [[name, value], ...], "body": "..."}
//
// `path` and `query` split `req.url` (the request target as received) at the first `?`;
// `headers` pairs up `req.rawHeaders`: every header line in arrival order, names as sent, a
// repeated header once per line. Node has already decoded a chunked body. The body is reported
// as UTF-8 text. The answer is `200 text/plain` "reported\n".
//
// SIGTERM stops it.

import { appendFileSync } from 'node:fs';
import { createServer } from 'node:http';

const report = process.argv[2];
if (!report) {
  console.error('usage: node upstream_node.mjs REPORT_FILE');
  process.exit(2);
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const headers = [];
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      headers.push([req.rawHeaders[i], req.rawHeaders[i + 1]]);
    }
    const at = req.url.indexOf('?');
    const entry = {
      server: 'node http',
      request_line: `${req.method} ${req.url} HTTP/${req.httpVersion}`,
      path: at < 0 ? req.url : req.url.slice(0, at),
      query: at < 0 ? '' : req.url.slice(at + 1),
      headers,
      body: Buffer.concat(chunks).toString('utf8'),
    };
    appendFileSync(report, `${JSON.stringify(entry)}\n`);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('reported\n');
  });
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  process.stdout.write(`${JSON.stringify({ base_url: `http://127.0.0.1:${port}`, pid: process.pid })}\n`);
});

process.on('SIGTERM', () => process.exit(0));
