// Campaign page: polls the status endpoint every 2 s and moves the progress bar, the counters,
// the rate, the time left and the pause reason.  When the status itself changes (started,
// paused, finished) the page reloads, so the buttons always match what the campaign can do.
(function () {
  "use strict";
  const card = document.getElementById("progress-card");
  if (!card) return;
  const text = JSON.parse(document.getElementById("campaign-progress-text").textContent);
  const numbers = new Intl.NumberFormat(document.documentElement.lang || undefined);
  const bar = document.getElementById("progress-bar");
  const chip = document.querySelector(".page-head .mkt-status-chip");
  const initialStatus = chip ? chip.getAttribute("data-status") : null;
  const INTERVAL = 2000;

  function set(key, value) {
    const el = card.querySelector('[data-progress="' + key + '"]');
    if (el) el.textContent = value;
  }

  function eta(seconds) {
    if (seconds === null || seconds === undefined) return text.none;
    if (seconds < 60) return text.lessThanMinute;
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return text.minutes.replace("%(n)s", minutes);
    return text.hours.replace("%(h)s", Math.floor(minutes / 60)).replace("%(m)s", minutes % 60);
  }

  function show(data) {
    const pct = data.total ? (100 * data.sent / data.total) : 0;
    bar.firstElementChild.style.width = pct.toFixed(1) + "%";
    bar.setAttribute("aria-valuenow", data.sent);
    bar.setAttribute("aria-valuemax", data.total);
    set("sent", numbers.format(data.sent));
    set("total", numbers.format(data.total));
    set("failed", numbers.format(data.failed));
    set("skipped", numbers.format(data.skipped));
    set("rate_per_minute", numbers.format(data.rate_per_minute));
    if (data.eta_text) {  // today's quota cannot cover the rest: days, not the rate's minutes
      set("eta", data.eta_text);
    } else {
      set("eta", data.status === "running" ? eta(data.eta_seconds) : text.none);
    }
    const note = document.getElementById("quota-note");
    note.textContent = data.quota_note || "";
    note.hidden = !data.quota_note;
    const reason = document.getElementById("pause-reason");
    reason.textContent = data.pause_text || "";
    reason.hidden = !data.pause_text;
    const error = document.getElementById("last-error");
    error.textContent = data.last_error ? text.lastError + " " + data.last_error : "";
    error.hidden = !data.last_error;
    card.setAttribute("data-status", data.status);
  }

  function poll() {
    fetch(card.getAttribute("data-status-url"), {
      credentials: "same-origin", headers: { "Accept": "application/json" }, cache: "no-store",
    }).then(function (response) {
      if (!response.ok) throw new Error(response.status);
      return response.json();
    }).then(function (data) {
      show(data);
      if (initialStatus && data.status !== initialStatus) {
        window.location.reload();
        return;
      }
      if (!data.final) setTimeout(poll, INTERVAL);
    }).catch(function () {
      setTimeout(poll, INTERVAL * 2);  // a failed poll (server restart) must not stop the page
    });
  }

  if (card.getAttribute("data-final") !== "true") setTimeout(poll, INTERVAL);
})();
