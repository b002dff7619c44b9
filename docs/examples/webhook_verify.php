<?php
// A Coinskro webhook handler in PHP (standard functions only) that verifies each signature.
//
// Run: WEBHOOK_SECRET=your-secret php -S 127.0.0.1:3000 webhook_verify.php

$secret = getenv('WEBHOOK_SECRET');
if ($secret === false || $secret === '') {
    http_response_code(500);
    exit('set WEBHOOK_SECRET');
}
if ($_SERVER['REQUEST_METHOD'] !== 'POST') {
    http_response_code(405);
    exit('POST only');
}
$rawBody = file_get_contents('php://input'); // the exact bytes received: verify them before parsing
$expected = hash_hmac('sha256', $rawBody, $secret);
if (!hash_equals($expected, $_SERVER['HTTP_X_COINSKRO_SIGNATURE'] ?? '')) {
    http_response_code(401); // hash_equals is a constant-time comparison
    exit('invalid signature');
}
try {
    $payload = json_decode($rawBody, true, 32, JSON_THROW_ON_ERROR);
} catch (JsonException $e) {
    http_response_code(400);
    exit('not a webhook');
}
// json_decode makes the amount a float, which keeps about 16 digits (1.000000000000000001 becomes 1.0).
// Take its text from the raw body instead. In valid JSON a quote inside a string is escaped (\"), so
// `"amount":` can only be the key; a body with more or fewer than one is refused.
if (preg_match_all('/"amount"\s*:\s*(-?\d+(?:\.\d+)?)\s*[,}]/', $rawBody, $found) !== 1) {
    http_response_code(400);
    exit('not a webhook');
}
$amount = $found[1][0]; // compare it with bccomp() or as digits, never as a float
$data = $payload['data'];
// Store (payment_reference, event) once (a unique key: a repeat is answered 200 and ignored), then
// answer. Fulfil the order on payment_completed only.
error_log("verified {$payload['event']} {$data['payment_reference']} {$data['currency']} {$amount}");
echo $amount;
