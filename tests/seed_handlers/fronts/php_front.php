<?php
// The signature check in front of Coinskro's PHP handler (../handler.php, included unchanged).
//
// A PHP handler is a script the server runs per request, so the front is a script too: it runs the
// documented check (the lines of docs/examples/webhook_verify.php, verbatim: tests/test_seed_handlers.py
// compares them), which ends the request with `401 invalid signature` on a bad or missing signature,
// then includes the handler. php://input can be read again, so the handler reads the same bytes.
//
// Run: WEBHOOK_SECRET=your-secret php -S 127.0.0.1:3000 php_front.php

$secret = getenv('WEBHOOK_SECRET');
if ($secret === false || $secret === '') {
    http_response_code(500);
    exit('set WEBHOOK_SECRET');
}
$rawBody = file_get_contents('php://input'); // the exact bytes received: verify them before parsing
$expected = hash_hmac('sha256', $rawBody, $secret);
if (!hash_equals($expected, $_SERVER['HTTP_X_COINSKRO_SIGNATURE'] ?? '')) {
    http_response_code(401); // hash_equals is a constant-time comparison
    exit('invalid signature');
}

include __DIR__ . '/../handler.php';
