// The dashboard's one script: it refreshes the page in place and runs the Retry/Abort buttons.
// Every few seconds (?refresh=N, default 5; 0 starts paused) it fetches the page it shows and
// swaps the new <main> in, keeping open <details> open, and skips a turn while the tab is hidden
// or a filter field has focus. A button POSTs {"actor": "dashboard"} as JSON to the admin API on
// this origin, with whatever credentials the browser sends for the page: the script never holds
// the admin token.
"use strict";
(() => {
  const PAUSED = "saga-dashboard-paused";
  const asked = new URLSearchParams(location.search).get("refresh");
  const seconds = asked === null ? 5 : Math.max(Number(asked) || 0, 0);
  const toggle = document.getElementById("auto-refresh");
  const note = document.getElementById("action-status");
  let timer = null;

  document.documentElement.classList.add("scripted");

  function say(text, failed) {
    note.textContent = text;
    note.classList.toggle("failed", failed);
    note.hidden = false;
  }

  function typing() {
    const active = document.activeElement;
    return active !== null && active.closest("main form") !== null;
  }

  async function refresh(forced) {
    if (!forced && (document.hidden || typing())) return;
    let response;
    try {
      response = await fetch(location.href, { cache: "no-store", credentials: "same-origin" });
    } catch (error) {
      say(`refresh failed: ${error}`, true);
      return;
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.querySelector("main");
    if (fresh === null) return;
    const main = document.querySelector("main");
    const open = [...main.querySelectorAll("details")].map((d) => d.open);
    main.replaceChildren(...fresh.childNodes);
    main.querySelectorAll("details").forEach((d, i) => { d.open = open[i] ?? d.open; });
    const stamp = page.querySelector(".generated");
    if (stamp !== null) document.querySelector(".generated").textContent = stamp.textContent;
    document.title = page.title;
  }

  function schedule() {
    clearTimeout(timer);
    if (toggle.checked && seconds > 0) {
      timer = setTimeout(async () => { await refresh(false); schedule(); }, seconds * 1000);
    }
  }

  async function act(button) {
    const { action, saga } = button.dataset;
    button.disabled = true;
    let response;
    try {
      response = await fetch(`/sagas/${encodeURIComponent(saga)}/${action}`, {
        method: "POST",
        cache: "no-store",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ actor: "dashboard" }),
      });
    } catch (error) {
      say(`${action} failed: ${error}`, true);
      button.disabled = false;
      return;
    }
    const answer = await response.json().catch(() => ({}));
    if (response.ok) {
      say(`${action} accepted: the saga is ${answer.status}`, false);
    } else {
      say(`${action} refused (${response.status}): ${answer.detail ?? response.statusText}`, true);
    }
    await refresh(true);
  }

  document.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (button !== null) act(button);
  });
  toggle.checked = seconds > 0 && localStorage.getItem(PAUSED) !== "1";
  toggle.addEventListener("change", () => {
    localStorage.setItem(PAUSED, toggle.checked ? "0" : "1");
    schedule();
  });
  schedule();
})();
