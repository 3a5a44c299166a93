// The console's one script: what has to happen in the browser. Everything else is server-rendered.
"use strict";
(function () {
  // A [data-refresh] box is re-rendered in place from the fragment the server draws, every few
  // seconds, while the tab is visible.
  const box = document.querySelector("[data-refresh]");
  if (box) {
    const url = box.getAttribute("data-refresh");
    let busy = false;
    async function refresh() {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (r.status === 401) { window.location.assign("/ui/login"); return; }
        if (r.ok) box.innerHTML = await r.text();
      } catch (e) {
        // The gateway is restarting or the network is down: keep the last figures, try again.
      } finally {
        busy = false;
      }
    }
    window.setInterval(refresh, 3000);
  }

  // The dead-letter list: one box ticks or clears every job listed.
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", function () {
      for (const c of document.querySelectorAll("#jobs tbody input[type=checkbox][name=id]")) c.checked = all.checked;
    });
  }
})();
