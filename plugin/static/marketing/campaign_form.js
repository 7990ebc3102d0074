// Campaign form: live audience counts and forecast, custom send count, send time, list filters.
// The server decides every rule; this script only asks it (GET .../audience-count) and shows the
// answer, so a count on the page is always the one the launch check will see.
(function () {
  "use strict";
  const form = document.getElementById("campaign-form");
  if (!form) return;
  const text = JSON.parse(document.getElementById("campaign-form-text").textContent);
  const numbers = new Intl.NumberFormat(document.documentElement.lang || undefined);
  const counts = document.getElementById("audience-counts");
  const problem = document.getElementById("audience-problem");
  const forecast = document.getElementById("forecast");
  const custom = document.getElementById("custom_count");
  const customFields = document.getElementById("custom-count-fields");
  const submit = document.getElementById("submit-campaign");
  const sendAt = document.getElementById("send_at");
  let timer = null;
  let serial = 0;

  function checked(name) {
    return Array.from(form.querySelectorAll('input[name="' + name + '"]:checked')).map(function (el) {
      return el.value;
    });
  }

  function query() {
    const params = new URLSearchParams();
    ["include_tags", "include_views", "exclude_tags", "exclude_views"].forEach(function (name) {
      checked(name).forEach(function (value) { params.append(name, value); });
    });
    if (custom.checked) {
      const skip = form.elements.skip_count.value.trim();
      const max = form.elements.max_count.value.trim();
      if (skip) params.set("skip_count", skip);
      if (max) params.set("max_count", max);
    }
    const account = form.elements.account_id;
    if (account && account.value) params.set("account_id", account.value);
    return params;
  }

  function setCounts(values) {
    counts.querySelectorAll("[data-count]").forEach(function (el) {
      const value = values ? values[el.getAttribute("data-count")] : null;
      el.textContent = value === null || value === undefined ? "—" : numbers.format(value);
    });
    // With skip N / at most M the suppressed and invalid figures cover the window only: say so,
    // or "suppressed 0" reads as if the list had none.
    const outside = values ? values.outside_window : 0;
    const note = document.getElementById("window-note");
    note.textContent = outside ? text.outsideWindow.replace("%(n)s", numbers.format(outside)) : "";
    note.hidden = !outside;
  }

  function showProblem(errors) {
    const messages = Object.values(errors || {});
    problem.textContent = messages.join(" ");
    problem.hidden = messages.length === 0;
  }

  function showForecast(data) {
    if (!data) { forecast.hidden = true; return; }
    const cell = function (key) { return forecast.querySelector('[data-forecast="' + key + '"]'); };
    cell("recipients").textContent = numbers.format(data.recipients);
    cell("estimated_cost").textContent = data.channel === "smtp" ? text.noCost
      : text.currency + window.mktMoney(data.estimated_cost);
    cell("remaining_today").textContent = data.remaining_today === null ? text.unknown : numbers.format(data.remaining_today);
    cell("days_needed").textContent = data.days_needed === null ? text.unknown
      : (data.days_needed <= 1 ? text.oneDay : text.days.replace("%(n)s", data.days_needed));
    document.getElementById("forecast-note").hidden = data.fits_today !== false;
    forecast.hidden = false;
  }

  // The first count runs before the user has touched anything: an empty new form is not an error yet
  // (a form sent back with errors shows them beside the fields anyway).
  let quiet = true;

  function refresh() {
    const mine = ++serial;
    const silent = quiet;
    quiet = false;
    counts.classList.add("mkt-counting");
    counts.setAttribute("aria-busy", "true");
    fetch(form.getAttribute("data-count-url") + "?" + query().toString(), {
      credentials: "same-origin", headers: { "Accept": "application/json" },
    }).then(function (response) {
      return response.json().then(function (body) { return { ok: response.ok, body: body }; });
    }).then(function (result) {
      if (mine !== serial) return;  // an older answer arriving late must not win
      setCounts(result.body.counts);
      showProblem(silent && !result.body.counts ? null : result.body.errors);
      showForecast(result.body.forecast);
    }).catch(function () {
      if (mine !== serial) return;
      setCounts(null);
      showProblem({ failed: text.failed });
    }).finally(function () {
      if (mine !== serial) return;
      counts.classList.remove("mkt-counting");
      counts.removeAttribute("aria-busy");
    });
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  }

  form.addEventListener("change", function (event) {
    const name = event.target.name || event.target.id;
    if (/^(include|exclude)_|skip_count|max_count|account_id|custom_count/.test(name)) later();
  });
  form.addEventListener("input", function (event) {
    if (event.target.name === "skip_count" || event.target.name === "max_count") later();
  });

  custom.addEventListener("change", function () {
    customFields.hidden = !custom.checked;
    if (!custom.checked) {  // hidden values must not be sent: nobody would see why fewer got it
      form.elements.skip_count.value = "0";
      form.elements.max_count.value = "";
    }
  });

  form.querySelectorAll('input[name="send_mode"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      const timed = form.querySelector('input[name="send_mode"]:checked').value === "at";
      sendAt.disabled = !timed;
      if (timed && !sendAt.value) sendAt.focus();
      submit.textContent = submit.getAttribute(timed ? "data-label-at" : "data-label-now");
    });
  });

  form.querySelectorAll(".mkt-pick-filter").forEach(function (input) {
    input.addEventListener("input", function () {
      const needle = input.value.trim().toLowerCase();
      input.parentElement.querySelectorAll(".mkt-check").forEach(function (label) {
        label.hidden = needle !== "" && label.getAttribute("data-label").indexOf(needle) < 0;
      });
    });
  });

  refresh();
})();
