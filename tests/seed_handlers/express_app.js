// Coinskro's Node.js/Express webhook handler, copied unchanged from Coinskro's Webhooks documentation
// ("Handling Webhooks"). Only this comment is ours. Run behind fronts/express_front.js.

const express = require('express');
const app = express();

app.use(express.json());

app.post('/webhooks/coinskro', (req, res) => {
  const { event, data } = req.body;
  
  if (event === 'payment_completed') {
    const { payment_reference, amount, customer_email } = data;
    
    // 1. Verify this payment exists in your database
    // 2. Check if not already processed (idempotency)
    // 3. Fulfill the order
    
    console.log(`Payment ${payment_reference} completed for $${amount}`);
    
    // Mark order as paid in your database
    // await db.orders.update({ payment_reference }, { status: 'paid' });
    
    // Send confirmation email
    // await sendEmail(customer_email, 'Order Confirmed!');
  }
  
  // Always respond with 200 OK
  res.status(200).json({ received: true });
});

app.listen(3000);
