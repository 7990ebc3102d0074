// Small helpers shared by plugin and demo pages: CSRF header for fetch, confirmations, copy.
(function () {
  "use strict";
  const meta = document.querySelector('meta[name="csrf-token"]');
  window.mktFetch = function (url, options) {
    options = options || {};
    options.headers = Object.assign({ "Content-Type": "application/json", "Accept": "application/json" },
      options.headers || {});
    if (meta) options.headers["X-CSRFToken"] = meta.content;
    options.credentials = "same-origin";
    return fetch(url, options);
  };
  // Money as the pages write it (i18n.format_money): two decimals, a third when not zero, grouped
  // in the page's language, cut to thousandths in its decimal text first (never rounded up, also
  // in browsers without Intl's roundingMode).  The caller adds the currency symbol.
  const money = new Intl.NumberFormat(document.documentElement.lang || undefined,
    { minimumFractionDigits: 2, maximumFractionDigits: 3, roundingMode: "trunc" });
  window.mktMoney = function (value) {
    const text = String(value === null || value === undefined ? 0 : value);
    return money.format(Number(text.replace(/(\.\d{3})\d+$/, "$1")));
  };
  // The time-zone picker offers the browser's own zone when the list lacks it.
  const zones = document.getElementById("timezone-select");
  if (zones && window.Intl) {
    const own = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const known = Array.prototype.some.call(zones.options, function (o) { return o.value === own; });
    if (own && !known) {
      const option = document.createElement("option");
      option.value = own;
      option.textContent = (zones.getAttribute("data-browser-label") || "%(zone)s").replace("%(zone)s", own);
      zones.appendChild(option);
    }
  }
  // <form data-confirm="..."> asks before submitting (destructive actions).
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });
  // <button data-copy="text"> copies its text to the clipboard.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-copy]");
    if (!button) return;
    navigator.clipboard && navigator.clipboard.writeText(button.getAttribute("data-copy"));
    const label = button.textContent;
    button.textContent = button.getAttribute("data-copied") || "✓";
    setTimeout(function () { button.textContent = label; }, 1200);
  });
})();
