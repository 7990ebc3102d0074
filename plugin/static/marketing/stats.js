// Statistics pages: funnel, outcome pie and time series (vendored Chart.js), the account trend,
// and click-to-sort for the small breakdown tables (rows marked data-fixed stay last).
(function () {
  "use strict";
  const COLORS = ["#2f6fed", "#12805c", "#a15c07", "#7b3fc4", "#c0392b", "#5f6b7a", "#d4a017", "#1b9aaa"];
  const OUTCOME_COLORS = {
    delivered: "#12805c", bounced: "#d35400", invalid: "#c0392b", failed: "#7f1d1d",
    skipped: "#95a5a6", in_flight: "#f1c40f", pending: "#d5dbe3"
  };

  function chart(id, config) {
    const canvas = document.getElementById(id);
    if (!canvas || !window.Chart) return;
    config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
    new window.Chart(canvas, config);
    canvas.setAttribute("data-rendered", "1");
  }

  const source = document.getElementById("stats-chart-data");
  if (source) {
    const d = JSON.parse(source.textContent);
    chart("funnel-chart", {
      type: "bar",
      data: { labels: d.funnel.labels, datasets: [{ data: d.funnel.values, backgroundColor: COLORS[0] }] },
      options: { indexAxis: "y", plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true } } }
    });
    chart("outcomes-chart", {
      type: "doughnut",
      data: {
        labels: d.outcomes.labels,
        datasets: [{ data: d.outcomes.values, backgroundColor: d.outcomes.keys.map(function (k) { return OUTCOME_COLORS[k] || "#999"; }) }]
      },
      options: { plugins: { legend: { position: "right" } } }
    });
    // One period (a campaign's first hour) is a row of bars: a line of one point shows nothing.
    const single = d.series.labels.length < 2;
    chart("series-chart", {
      type: single ? "bar" : "line",
      data: {
        labels: d.series.labels,
        datasets: d.series.datasets.map(function (s, i) {
          return { label: s.label, data: s.data, borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length],
                   tension: 0.2, pointRadius: d.series.labels.length > 60 ? 0 : 2, hidden: s.key === "invalid" };
        })
      },
      options: { interaction: { mode: "index", intersect: false }, scales: { y: { beginAtZero: true } } }
    });
  }

  const trend = document.getElementById("account-chart-data");
  if (trend) {
    const d = JSON.parse(trend.textContent);
    chart("account-chart", {
      data: {
        labels: d.labels,
        datasets: [
          { type: "bar", label: d.names.total, data: d.total, backgroundColor: "#2f6fed" },
          { type: "bar", label: d.names.delivered, data: d.delivered, backgroundColor: "#12805c" },
          { type: d.labels.length < 2 ? "bar" : "line", label: d.names.failed, data: d.failed, borderColor: "#c0392b", backgroundColor: "#c0392b", tension: 0.2 }
        ]
      },
      options: { interaction: { mode: "index", intersect: false }, scales: { y: { beginAtZero: true } } }
    });
  }

  // Click a header of a .mkt-sortable table to sort by it (numbers by data-value).
  document.querySelectorAll("table.mkt-sortable").forEach(function (table) {
    const heads = table.querySelectorAll("thead th");
    heads.forEach(function (th, index) {
      th.setAttribute("aria-sort", "none");
      th.classList.add("mkt-sort-head");
      th.tabIndex = 0;
      function sort() {
        const ascending = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (h) { h.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        const body = table.tBodies[0];
        const rows = Array.prototype.slice.call(body.rows);
        const fixed = rows.filter(function (r) { return r.hasAttribute("data-fixed"); });
        const numeric = th.getAttribute("data-type") === "num";
        const key = function (row) {
          const cell = row.cells[index];
          return numeric ? parseFloat(cell.getAttribute("data-value") || "0") : cell.textContent.trim().toLowerCase();
        };
        rows.filter(function (r) { return !r.hasAttribute("data-fixed"); })
          .sort(function (a, b) {
            const x = key(a), y = key(b);
            return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
          })
          .concat(fixed)
          .forEach(function (row) { body.appendChild(row); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); } });
    });
  });
})();
