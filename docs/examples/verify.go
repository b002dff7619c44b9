// A deposit-watcher callback handler in Go (standard library only) that verifies each signature.
//
// Run: CALLBACK_KEY=your-key CALLBACK_SECRET=your-secret PORT=8390 go run verify.go
package main

import (
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
)

type callback struct {
	ID               int64  `json:"id"`
	Status           string `json:"status"`
	CurrencyReceived struct {
		Currency string `json:"currency"`
		Amount   string `json:"amount"` // an exact decimal string: never parse it into a float
	} `json:"currency_received"`
}

func signatureOK(secret, rawBody []byte, signature string) bool {
	mac := hmac.New(sha512.New, secret)
	mac.Write(rawBody)
	expected := hex.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(expected), []byte(signature)) // constant time
}

func main() {
	key, secret := os.Getenv("CALLBACK_KEY"), []byte(os.Getenv("CALLBACK_SECRET"))
	if key == "" || len(secret) == 0 {
		log.Fatal("set CALLBACK_KEY and CALLBACK_SECRET")
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8390"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		// The exact bytes received (a callback is a few kB): verify them before parsing.
		rawBody, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
			return
		}
		signature := r.Header.Get("X-Processing-Signature")
		if r.Header.Get("X-Processing-Key") != key || !signatureOK(secret, rawBody, signature) {
			http.Error(w, "invalid signature", http.StatusForbidden)
			return
		}
		var body callback
		if err := json.Unmarshal(rawBody, &body); err != nil {
			http.Error(w, "not a callback", http.StatusBadRequest)
			return
		}
		// Store (id, status) once (a unique key: a repeat is answered 200 and ignored), then answer.
		// Credit the customer on "confirmed" only.
		log.Println("verified", body.ID, body.Status, body.CurrencyReceived.Currency, body.CurrencyReceived.Amount)
		io.WriteString(w, "OK")
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+port, nil))
}
