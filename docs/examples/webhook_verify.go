// A Coinskro webhook handler in Go (standard library only) that verifies each signature.
//
// Run: WEBHOOK_SECRET=your-secret PORT=3000 go run webhook_verify.go
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
)

type webhook struct {
	Event string `json:"event"`
	Data  struct {
		PaymentReference string `json:"payment_reference"`
		// json.Number keeps the amount's text: a float64 keeps about 16 digits
		// (1.000000000000000001 becomes 1). Compare it as digits or with math/big, never as a float.
		Amount   json.Number `json:"amount"`
		Currency string      `json:"currency"`
	} `json:"data"`
}

func signatureOK(secret, rawBody []byte, signature string) bool {
	mac := hmac.New(sha256.New, secret)
	mac.Write(rawBody)
	expected := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(expected), []byte(signature)) // constant time
}

func main() {
	secret := []byte(os.Getenv("WEBHOOK_SECRET"))
	if len(secret) == 0 {
		log.Fatal("set WEBHOOK_SECRET")
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "3000"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		// The exact bytes received (a webhook is a few kB): verify them before parsing.
		rawBody, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
			return
		}
		if !signatureOK(secret, rawBody, r.Header.Get("X-Coinskro-Signature")) {
			http.Error(w, "invalid signature", http.StatusUnauthorized)
			return
		}
		decoder := json.NewDecoder(bytes.NewReader(rawBody))
		decoder.UseNumber() // numbers as json.Number (their text), here and in any map[string]any
		var payload webhook
		if err := decoder.Decode(&payload); err != nil {
			http.Error(w, "not a webhook", http.StatusBadRequest)
			return
		}
		amount := payload.Data.Amount.String()
		// Store (payment_reference, event) once (a unique key: a repeat is answered 200 and ignored),
		// then answer. Fulfil the order on payment_completed only.
		log.Println("verified", payload.Event, payload.Data.PaymentReference, payload.Data.Currency, amount)
		io.WriteString(w, amount)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}
