# Coinskro's Python/Flask webhook handler, copied unchanged from Coinskro's Webhooks documentation
# ("Handling Webhooks"). Only this comment is ours. Run behind fronts/flask_front.py.

from flask import Flask, request, jsonify

app = Flask(__name__)

@app.route('/webhooks/coinskro', methods=['POST'])
def coinskro_webhook():
    payload = request.json
    event = payload.get('event')
    data = payload.get('data')
    
    if event == 'payment_completed':
        payment_reference = data['payment_reference']
        amount = data['amount']
        
        # 1. Verify this payment exists in your database
        # 2. Check if not already processed (idempotency)
        # 3. Fulfill the order
        
        print(f"Payment {payment_reference} completed for ${amount}")
        
        # Mark order as paid
        # db.orders.update(payment_reference, status='paid')
    
    return jsonify({'received': True}), 200

if __name__ == '__main__':
    app.run(port=3000)
