// A Coinskro webhook handler in Node.js (standard library only) that verifies each signature.
//
// Run: WEBHOOK_SECRET=your-secret PORT=3000 node webhook_verify.js
'use strict';
const crypto = require('node:crypto');
const http = require('node:http');

const SECRET = process.env.WEBHOOK_SECRET;
if (!SECRET) throw new Error('set WEBHOOK_SECRET');

function signatureOk(rawBody, signature) {
  const expected = Buffer.from(crypto.createHmac('sha256', SECRET).update(rawBody).digest('hex'));
  const given = Buffer.from(signature || '');
  // timingSafeEqual throws on different lengths; the length of a hex digest is no secret.
  return given.length === expected.length && crypto.timingSafeEqual(given, expected);
}

// JSON.parse turns the amount into a Number, which keeps about 16 digits: 1.000000000000000001 becomes 1.
// Take its text from the raw body instead. In valid JSON a quote inside a string is escaped (\"), so
// `"amount":` can only be the key; a body with more or fewer than one is refused.
function amountText(text) {
  const found = [...text.matchAll(/"amount"\s*:\s*(-?\d+(?:\.\d+)?)\s*[,}]/g)];
  if (found.length !== 1) throw new Error('no single amount in the body');
  return found[0][1]; // compare it as digits, or with a decimal library, never as a Number
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
    if (!signatureOk(rawBody, req.headers['x-coinskro-signature'])) {
      return answer(res, 401, 'invalid signature');
    }
    const text = rawBody.toString('utf8');
    let event, data, amount;
    try {
      ({ event, data } = JSON.parse(text));
      amount = amountText(text);
    } catch (err) {
      return answer(res, 400, 'not a webhook');
    }
    // Store (payment_reference, event) once (a unique key: a repeat is answered 200 and ignored),
    // then answer. Fulfil the order on payment_completed only.
    console.log('verified', event, data.payment_reference, data.currency, amount);
    return answer(res, 200, amount);
  });
}).listen(Number(process.env.PORT || 3000), '127.0.0.1');
