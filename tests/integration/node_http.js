// An HTTP server and client on Node.js (libuv: epoll, non-blocking sockets,
// a thread pool beside the loop), standing in for the node programs people
// run under tether-run.
//
//   node node_http.js server PORT FILE RATE
//       Serves FILE at every path, paced to RATE bytes/s (0: unpaced), with
//       its Content-Length; keep-alive as node does by default.
//   node node_http.js client URL OUT [COUNT]
//       GETs URL COUNT times (default 1) over one keep-alive agent, writing
//       each body to OUT (flushed as it arrives, so its size shows
//       progress; each fetch overwrites it).  Exit 0 when every response
//       was 200 and complete; any error is printed and exits 1.
'use strict';
const http = require('http');
const fs = require('fs');

function serve(port, file, rate) {
  const size = fs.statSync(file).size;
  const server = http.createServer((req, res) => {
    res.writeHead(200, {'Content-Type': 'application/octet-stream', 'Content-Length': size});
    const stream = fs.createReadStream(file, {highWaterMark: 256 * 1024});
    const start = Date.now();
    let sent = 0;
    stream.on('data', (chunk) => {
      sent += chunk.length;
      const more = res.write(chunk);
      const ahead = rate ? (sent / rate) * 1000 - (Date.now() - start) : 0;
      if (!more || ahead > 0) {
        stream.pause();
        const go = () => setTimeout(() => stream.resume(), Math.max(ahead, 0));
        if (more) go(); else res.once('drain', go);
      }
    });
    stream.on('end', () => res.end());
    stream.on('error', (e) => res.destroy(e));
  });
  server.listen(port, '127.0.0.1');
}

function fetch(agent, url, out) {
  return new Promise((resolve, reject) => {
    http.get(url, {agent}, (res) => {
      if (res.statusCode !== 200) {
        reject(new Error(`status ${res.statusCode}`));
        res.resume();
        return;
      }
      const want = Number(res.headers['content-length']);
      const fd = fs.openSync(out, 'w');
      let got = 0;
      res.on('data', (chunk) => {
        fs.writeSync(fd, chunk);
        got += chunk.length;
      });
      res.on('end', () => {
        fs.closeSync(fd);
        if (got === want) resolve();
        else reject(new Error(`body of ${got} bytes, Content-Length ${want}`));
      });
      res.on('error', reject);
    }).on('error', reject);
  });
}

async function client(url, out, count) {
  const agent = new http.Agent({keepAlive: true, maxSockets: 1});
  for (let i = 0; i < count; i++) await fetch(agent, url, out);
  agent.destroy();
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'server' && args.length === 3) {
  serve(Number(args[0]), args[1], Number(args[2]));
} else if (mode === 'client' && (args.length === 2 || args.length === 3)) {
  client(args[0], args[1], Number(args[2] || 1)).catch((e) => {
    console.error(`node_http: ${e.message}`);
    process.exit(1);
  });
} else {
  console.error('usage: node_http.js server PORT FILE RATE | client URL OUT [COUNT]');
  process.exit(2);
}
