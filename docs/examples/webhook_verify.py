"""A Coinskro webhook handler in Python (standard library only) that verifies each signature.

Run: WEBHOOK_SECRET=your-secret PORT=3000 python3 webhook_verify.py
"""

import hashlib
import hmac
import json
import os
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = os.environ["WEBHOOK_SECRET"].encode("utf-8")


def signature_ok(raw_body: bytes, signature: str) -> bool:
    expected = hmac.new(SECRET, raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.encode())  # constant time


class WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        # The exact bytes received: verify them before parsing anything.
        raw_body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if not signature_ok(raw_body, self.headers.get("X-Coinskro-Signature", "")):
            self.answer(401, "invalid signature")
            return
        # parse_float=Decimal: the amount's digits exactly as sent (a float would round 18 decimals).
        payload = json.loads(raw_body, parse_float=Decimal)
        event, data = payload["event"], payload["data"]
        amount = data["amount"]  # a Decimal: compare it with the order's total as a Decimal
        text = f"{amount:f}"  # its digits as sent: str() would write 0.00000001 as 1E-8
        # Store (payment_reference, event) once (a unique key: a repeat is answered 200 and ignored),
        # then answer. Fulfil the order on payment_completed only.
        print("verified", event, data["payment_reference"], data["currency"], text, flush=True)
        self.answer(200, text)

    def answer(self, code: int, text: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(text.encode())


# Imported (`signature_ok` in your own framework), it only defines; run as a program, it serves.
if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "3000"))), WebhookHandler).serve_forever()
