<?php
$payload = json_decode(file_get_contents('php://input'), true);

$event = $payload['event'];
$data = $payload['data'];

if ($event === 'payment_completed') {
    $payment_reference = $data['payment_reference'];
    $amount = $data['amount'];
    
    // 1. Verify this payment exists in your database
    // 2. Check if not already processed (idempotency)
    // 3. Fulfill the order
    
    error_log("Payment {$payment_reference} completed for \${$amount}");
    
    // Mark order as paid in your database
    // $pdo->prepare("UPDATE orders SET status = 'paid' WHERE payment_reference = ?")->execute([$payment_reference]);
}

// Always respond with 200 OK
http_response_code(200);
echo json_encode(['received' => true]);
