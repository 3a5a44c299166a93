// The overview's table refreshes in place: a small fetch of the fragment the server renders.
"use strict";
(function () {
  const box = document.querySelector("[data-refresh]");
  if (!box) return;
  const url = box.getAttribute("data-refresh");
  async function refresh() {
    try {
      const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (r.status === 401) { window.location.assign("/ui/login"); return; }
      if (r.ok) box.innerHTML = await r.text();
    } catch (e) {
      // The gateway is restarting or the network is down: keep the last figures, try again.
    }
  }
  window.setInterval(refresh, 3000);
})();
