"""A deposit-watcher callback handler in Python (standard library only) that verifies each signature.

Run: CALLBACK_KEY=your-key CALLBACK_SECRET=your-secret PORT=8390 python3 verify.py
"""

import hashlib
import hmac
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY = os.environ["CALLBACK_KEY"]
SECRET = os.environ["CALLBACK_SECRET"].encode("utf-8")


def signature_ok(raw_body: bytes, signature: str) -> bool:
    expected = hmac.new(SECRET, raw_body, hashlib.sha512).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())  # constant time


class CallbackHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        # The exact bytes received: verify them before parsing anything.
        raw_body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("X-Processing-Key")
        signature = self.headers.get("X-Processing-Signature", "")
        if key != KEY or not signature_ok(raw_body, signature):
            self.answer(403, "invalid signature")
            return
        body = json.loads(raw_body)
        received = body["currency_received"]
        # Store (id, status) once (a unique key: a repeat is answered 200 and ignored), then answer.
        # Credit the customer on "confirmed" only. Amounts are exact decimal strings: use Decimal.
        print("verified", body["id"], body["status"], received["currency"], received["amount"], flush=True)
        self.answer(200, "OK")

    def answer(self, code: int, text: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(text.encode())


ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8390"))), CallbackHandler).serve_forever()
