// The signature check in front of Coinskro's Express handler (../express_app.js, run unchanged: it
// listens on port 3000 itself).
//
// A separate front server rather than middleware slipped into the handler's app: the handler's file
// creates its own app and parses JSON before any route, so adding a check inside it would mean editing it
// or patching Express. This front verifies the exact bytes with the documented check (the lines of
// docs/examples/webhook_verify.js, verbatim: tests/test_seed_handlers.py compares them), answers
// `401 invalid signature` to a bad or missing signature, and forwards the same bytes of every verified
// webhook to the handler, answering what it answers.
//
// Run: WEBHOOK_SECRET=your-secret PORT=3001 node express_front.js  (the handler on 127.0.0.1:3000)
'use strict';
const crypto = require('node:crypto');
const http = require('node:http');

const HANDLER_PORT = 3000; // the handler's app.listen(3000)

const SECRET = process.env.WEBHOOK_SECRET;
if (!SECRET) throw new Error('set WEBHOOK_SECRET');

function signatureOk(rawBody, signature) {
  const expected = Buffer.from(crypto.createHmac('sha256', SECRET).update(rawBody).digest('hex'));
  const given = Buffer.from(signature || '');
  // timingSafeEqual throws on different lengths; the length of a hex digest is no secret.
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

function forward(req, rawBody, res) {
  const headers = {
    'Content-Type': req.headers['content-type'] || 'application/json',
    'Content-Length': rawBody.length,
  };
  const toHandler = http.request(
    { host: '127.0.0.1', port: HANDLER_PORT, method: req.method, path: req.url, headers },
    (answer) => {
      res.writeHead(answer.statusCode, { 'Content-Type': answer.headers['content-type'] || 'text/plain' });
      answer.pipe(res);
    },
  );
  toHandler.on('error', () => {
    res.writeHead(502, { 'Content-Type': 'text/plain' });
    res.end('handler unreachable');
  });
  toHandler.end(rawBody);
}

http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const rawBody = Buffer.concat(chunks); // the exact bytes received: verify them, forward them
    if (!signatureOk(rawBody, req.headers['x-coinskro-signature'])) {
      res.writeHead(401, { 'Content-Type': 'text/plain' });
      return res.end('invalid signature');
    }
    return forward(req, rawBody, res);
  });
}).listen(Number(process.env.PORT), '127.0.0.1');
