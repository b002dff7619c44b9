// A deposit-watcher callback handler in Node.js (standard library only) that verifies each signature.
//
// Run: CALLBACK_KEY=your-key CALLBACK_SECRET=your-secret PORT=8390 node verify.js
'use strict';
const crypto = require('node:crypto');
const http = require('node:http');

const KEY = process.env.CALLBACK_KEY;
const SECRET = process.env.CALLBACK_SECRET;
if (!KEY || !SECRET) throw new Error('set CALLBACK_KEY and CALLBACK_SECRET');

function signatureOk(rawBody, signature) {
  const expected = Buffer.from(crypto.createHmac('sha512', SECRET).update(rawBody).digest('hex'));
  const given = Buffer.from(signature || '');
  // timingSafeEqual throws on different lengths; the length of a hex digest is no secret.
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

function answer(res, code, text) {
  res.writeHead(code, { 'Content-Type': 'text/plain' });
  res.end(text);
}

http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    const rawBody = Buffer.concat(chunks); // the exact bytes received: verify them before parsing
    if (req.method !== 'POST') return answer(res, 405, 'POST only');
    const key = req.headers['x-processing-key'];
    if (key !== KEY || !signatureOk(rawBody, req.headers['x-processing-signature'])) {
      return answer(res, 403, 'invalid signature');
    }
    const body = JSON.parse(rawBody.toString('utf8'));
    const received = body.currency_received;
    // Store (id, status) once (a unique key: a repeat is answered 200 and ignored), then answer.
    // Credit the customer on "confirmed" only. Amounts are exact decimal strings: never Number().
    console.log('verified', body.id, body.status, received.currency, received.amount);
    return answer(res, 200, 'OK');
  });
}).listen(Number(process.env.PORT || 8390), '127.0.0.1');
