// Coinskro's Go webhook handler, copied unchanged from Coinskro's Webhooks documentation
// ("Handling Webhooks"). Only this comment is ours. Run behind fronts/go_front.go.

package main

import (
    "encoding/json"
    "fmt"
    "net/http"
)

type WebhookPayload struct {
    Event string `json:"event"`
    Data  struct {
        PaymentReference string  `json:"payment_reference"`
        Amount           float64 `json:"amount"`
        Currency         string  `json:"currency"`
        CustomerEmail    string  `json:"customer_email"`
    } `json:"data"`
}

func webhookHandler(w http.ResponseWriter, r *http.Request) {
    var payload WebhookPayload
    json.NewDecoder(r.Body).Decode(&payload)
    
    if payload.Event == "payment_completed" {
        fmt.Printf("Payment %s completed for $%.2f\n", 
            payload.Data.PaymentReference, 
            payload.Data.Amount)
        
        // 1. Verify this payment exists in your database
        // 2. Check if not already processed (idempotency)  
        // 3. Fulfill the order
    }
    
    w.WriteHeader(http.StatusOK)
    json.NewEncoder(w).Encode(map[string]bool{"received": true})
}

func main() {
    http.HandleFunc("/webhooks/coinskro", webhookHandler)
    http.ListenAndServe(":3000", nil)
}
