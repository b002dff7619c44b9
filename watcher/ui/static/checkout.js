// The checkout page (watcher/ui/checkout.py): counts down to the expiry, polls the payment's status and
// shows it as it changes, without a reload; copies the address. Its settings are the data- attributes
// of #checkout: the Content-Security-Policy allows no inline script.
"use strict";
(function () {
  const root = document.getElementById("checkout");
  if (!root) {
    return;
  }
  const byId = (id) => document.getElementById(id);
  const statusUrl = root.dataset.statusUrl;
  const pollMs = Number(root.dataset.pollMs) || 2000;
  const FINAL = ["completed", "expired", "canceled"];
  let expiresAt = Number(root.dataset.expiresAtMs);
  // The customer's clock may be wrong: count down on the server's.
  let skew = Number(root.dataset.serverTimeMs) - Date.now();
  let ticker = null;

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function tick() {
    const left = Math.max(0, Math.floor((expiresAt - (Date.now() + skew)) / 1000));
    const h = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const s = left % 60;
    byId("time-left").textContent = h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  }

  function show(state) {
    root.dataset.state = state.state;
    const status = byId("status");
    status.textContent = state.label; // text, never HTML
    status.className = "status status-" + state.state;
    byId("countdown").hidden = state.state !== "waiting";
    byId("pay").hidden = state.final;
    if (state.return_url) {
      byId("return-link").href = state.return_url;
      byId("return").hidden = false;
    }
  }

  async function poll() {
    try {
      const answer = await fetch(statusUrl, { cache: "no-store", headers: { Accept: "application/json" } });
      if (answer.ok) {
        const state = await answer.json();
        skew = state.server_time_ms - Date.now();
        expiresAt = state.expires_at_ms;
        show(state);
        if (state.final) {
          clearInterval(ticker);
          return;
        }
      }
    } catch (e) {
      // Offline for a moment: the next poll tries again.
    }
    setTimeout(poll, pollMs);
  }

  function copied() {
    byId("copied").hidden = false;
  }

  function copy(event) {
    const text = event.currentTarget.dataset.copy;
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(copied, selectAddress);
    } else {
      selectAddress();
    }
  }

  function selectAddress() {
    // No clipboard API (an old browser, a page not served over HTTPS): select it for the customer.
    const range = document.createRange();
    range.selectNodeContents(byId("address"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  byId("copy").addEventListener("click", copy);
  tick();
  if (!FINAL.includes(root.dataset.state)) {
    ticker = setInterval(tick, 1000);
    setTimeout(poll, pollMs);
  }
})();
