<?php
// A deposit-watcher callback handler in PHP (standard functions only) that verifies each signature.
//
// Run: CALLBACK_KEY=your-key CALLBACK_SECRET=your-secret php -S 127.0.0.1:8390 verify.php

$key = getenv('CALLBACK_KEY');
$secret = getenv('CALLBACK_SECRET');
if ($key === false || $secret === false || $secret === '') {
    http_response_code(500);
    exit('set CALLBACK_KEY and CALLBACK_SECRET');
}
if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    http_response_code(405);
    exit('POST only');
}
$rawBody = file_get_contents('php://input'); // the exact bytes received: verify them before parsing
$expected = hash_hmac('sha512', $rawBody, $secret);
$signature = $_SERVER['HTTP_X_PROCESSING_SIGNATURE'] ?? '';
if (($_SERVER['HTTP_X_PROCESSING_KEY'] ?? null) !== $key || !hash_equals($expected, $signature)) {
    http_response_code(403); // hash_equals is a constant-time comparison
    exit('invalid signature');
}
$body = json_decode($rawBody, true, 32, JSON_THROW_ON_ERROR | JSON_BIGINT_AS_STRING);
$received = $body['currency_received'];
// Store (id, status) once (a unique key: a repeat is answered 200 and ignored), then answer.
// Credit the customer on "confirmed" only. Amounts are exact decimal strings: use bcmath, never floats.
error_log("verified {$body['id']} {$body['status']} {$received['currency']} {$received['amount']}");
echo 'OK';
