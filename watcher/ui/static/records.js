// The back office's lists (watcher/ui/records.py): on the first page, the table is fetched again every
// few seconds and replaced, so a new deposit or payment shows without a reload. Nothing more. The URL is
// the data- attribute of #records: the Content-Security-Policy allows no inline script.
"use strict";
(function () {
  const box = document.querySelector("#records[data-refresh-url]");
  if (!box) {
    return;
  }
  const url = box.dataset.refreshUrl;
  const everyMs = Number(box.dataset.refreshMs) || 3000;

  async function refresh() {
    try {
      // A redirect means the session ended (to the sign-in page): an error here, not a table.
      const answer = await fetch(url, { cache: "no-store", credentials: "same-origin", redirect: "error" });
      if (answer.ok) {
        const html = await answer.text(); // the server's escaped HTML; a script in it would never run
        if (html !== box.dataset.shown) {
          box.innerHTML = html;
          box.dataset.shown = html;
        }
      }
    } catch (e) {
      // Offline for a moment, or signed out: the next round tries again.
    }
    setTimeout(refresh, everyMs);
  }

  setTimeout(refresh, everyMs);
})();
