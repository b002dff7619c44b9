// The signature check in front of Coinskro's Go handler (../main.go, run unchanged: it listens on
// :3000 itself).
//
// A separate front server: the handler's file is a whole program (its own main and mux), so a check
// cannot be added to it without editing it. This front verifies the exact bytes with the documented
// check (signatureOK of docs/examples/webhook_verify.go, verbatim: tests/test_seed_handlers.py compares
// them), answers `401 invalid signature` to a bad or missing signature, and forwards the same bytes of
// every verified webhook to the handler, answering what it answers.
//
// Run: WEBHOOK_SECRET=your-secret PORT=3001 go run go_front.go  (the handler on 127.0.0.1:3000)
package main

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log"
	"net/http"
	"os"
)

const handlerURL = "http://127.0.0.1:3000" // the handler's http.ListenAndServe(":3000", nil)

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
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// The exact bytes received (a webhook is a few kB): verify them, then forward them.
		rawBody, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, "cannot read the body", http.StatusBadRequest)
			return
		}
		if !signatureOK(secret, rawBody, r.Header.Get("X-Coinskro-Signature")) {
			http.Error(w, "invalid signature", http.StatusUnauthorized)
			return
		}
		answer, err := http.Post(handlerURL+r.URL.Path, r.Header.Get("Content-Type"), bytes.NewReader(rawBody))
		if err != nil {
			http.Error(w, "handler unreachable", http.StatusBadGateway)
			return
		}
		defer answer.Body.Close()
		w.Header().Set("Content-Type", answer.Header.Get("Content-Type"))
		w.WriteHeader(answer.StatusCode)
		io.Copy(w, answer.Body)
	})
	log.Fatal(http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), nil))
}
