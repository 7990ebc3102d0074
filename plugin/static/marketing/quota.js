// Quota page: the history chart (vendored Chart.js) and the live forecast calculator.
(function () {
  "use strict";
  const data = document.getElementById("quota-history-data");
  const canvas = document.getElementById("quota-history-chart");
  if (data && canvas && window.Chart) {
    const d = JSON.parse(data.textContent);
    // A step line needs two syncs to draw; until then each value shows as a dot.
    const synced = d.quota.filter(function (v) { return v !== null; }).length;
    new window.Chart(canvas, {
      data: {
        labels: d.labels,
        datasets: [
          { type: "bar", label: d.names.used, data: d.used, backgroundColor: "#2f6fed", yAxisID: "mails",
            maxBarThickness: 24 },
          { type: "line", label: d.names.quota, data: d.quota, borderColor: "#a15c07", stepped: true,
            pointRadius: synced < 2 ? 4 : 0, backgroundColor: "#a15c07", spanGaps: true, yAxisID: "mails" },
          { type: "line", label: d.names.balance, data: d.balance, borderColor: "#12805c", tension: 0.2,
            spanGaps: true, yAxisID: "money" }
        ]
      },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          mails: { type: "linear", position: "left", beginAtZero: true },
          money: { type: "linear", position: "right", beginAtZero: true, grid: { drawOnChartArea: false } }
        }
      }
    });
    canvas.setAttribute("data-rendered", "1");
  }

  const result = document.getElementById("forecast-result");
  const input = document.getElementById("forecast-recipients");
  const account = document.getElementById("forecast-account");
  if (!result || !input) return;
  const labels = JSON.parse(result.getAttribute("data-labels") || "{}");
  // The symbol comes from the server (translated), the digit grouping from the page's language.
  const currency = result.getAttribute("data-currency") || "";
  const numbers = new Intl.NumberFormat(document.documentElement.lang || undefined);
  let timer = null;
  function count(value) {
    return value === null || value === undefined ? null : numbers.format(value);
  }
  function show(f) {
    result.textContent = "";
    const dl = document.createElement("dl");
    dl.className = "forecast-figures";
    const cost = currency + window.mktMoney(f.estimated_cost);
    [[labels.cost, cost], [labels.today, count(f.remaining_today)],
     [labels.perDay, count(f.per_day)], [labels.days, count(f.days_needed)]].forEach(function (pair) {
      const dt = document.createElement("dt"); dt.textContent = pair[0];
      const dd = document.createElement("dd"); dd.textContent = pair[1] === null ? "—" : String(pair[1]);
      dl.appendChild(dt); dl.appendChild(dd);
    });
    result.appendChild(dl);
    (f.messages || []).forEach(function (m) {
      const p = document.createElement("p"); p.textContent = m; result.appendChild(p);
    });
  }
  function update() {
    const n = input.value.trim();
    if (!/^\d+$/.test(n)) return;
    const url = result.getAttribute("data-url") + "?recipients=" + encodeURIComponent(n) +
      (account && account.value ? "&account_id=" + encodeURIComponent(account.value) : "");
    window.mktFetch(url).then(function (r) { return r.json(); }).then(function (f) {
      if (f.errors) { result.textContent = Object.values(f.errors).join(" "); return; }
      show(f);
    });
  }
  function later() { clearTimeout(timer); timer = setTimeout(update, 250); }
  input.addEventListener("input", later);
  if (account) account.addEventListener("change", update);
})();
