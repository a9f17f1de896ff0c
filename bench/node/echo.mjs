// A reference echo server built with Node's ws, for the benchmarks only.
//
//   node echo.mjs [--listen HOST:PORT] [--no-deflate]
//
// Every message goes back to its sender, text as text and binary as binary.
// permessage-deflate is on (ws's default options for it) unless --no-deflate;
// every other setting is ws's default. Once bound it prints one line,
// `listening on ws://HOST:PORT`, on stdout. Port 0 picks a free port.

import { parseArgs } from 'node:util';
import { WebSocketServer } from 'ws';

const { values: args } = parseArgs({
  options: {
    listen: { type: 'string', default: '127.0.0.1:9001' },
    'no-deflate': { type: 'boolean', default: false },
  },
});

// HOST:PORT, with IPv6 hosts in brackets: [::1]:9001.
const match = /^\[?(.*?)\]?:(\d+)$/.exec(args.listen);
if (!match) {
  console.error(`echo.mjs: --listen wants HOST:PORT, not ${args.listen}`);
  process.exit(2);
}
const [, host, port] = match;

const wss = new WebSocketServer({ host, port: Number(port), perMessageDeflate: !args['no-deflate'] }, () => {
  const { address, family, port } = wss.address();
  const shown = family === 'IPv6' ? `[${address}]` : address;
  process.stdout.write(`listening on ws://${shown}:${port}\n`);
});

wss.on('error', (error) => {
  console.error(`echo.mjs: ${error.message}`);
  process.exit(1);
});

wss.on('connection', (ws) => {
  // As in ws's README: without a listener, a protocol error would end the process.
  ws.on('error', console.error);
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
