// Template editor: live preview in a sandboxed iframe (srcdoc, no scripts), "preview as" contact
// picker, size warning, unknown-variable warnings beside the fields, insert-variable buttons.
// The server does all rendering (POST .../templates/preview), so the preview is exactly what the
// runner would send; this file only moves text around.
(function () {
  "use strict";
  const dataNode = document.getElementById("template-editor-data");
  if (!dataNode) return;
  const data = JSON.parse(dataNode.textContent);
  const $ = (id) => document.getElementById(id);
  const fields = { subject: $("tpl-subject"), html: $("tpl-html"), text: $("tpl-text") };
  const frame = $("preview-frame");
  const status = $("preview-status");
  const contactId = $("preview-contact-id");
  const testContactId = $("test-contact-id");
  let lastFocused = fields.html;
  let timer = null;
  let seq = 0;

  function payload() {
    return {
      subject: fields.subject ? fields.subject.value : "",
      html: fields.html ? fields.html.value : "",
      text: fields.text ? fields.text.value : "",
      contact_id: contactId.value || null,
    };
  }

  function showUnknown(result) {
    ["subject", "html", "text"].forEach(function (name) {
      const box = $("tpl-" + name + "-unknown");
      if (!box) return;
      const message = result.unknown_message && result.unknown_message[name];
      box.hidden = !message;
      box.textContent = message || "";
      if (fields[name]) {
        if (message) fields[name].setAttribute("aria-invalid", "true");
        else if (!document.querySelector('[data-error="' + name + '"]')) fields[name].removeAttribute("aria-invalid");
      }
    });
  }

  function showSize(bytes, large) {
    const value = $("size-value");
    const warning = $("size-warning");
    if (value) value.textContent = (bytes / 1024).toFixed(1);
    if ($("size-info")) $("size-info").setAttribute("data-bytes", String(bytes));
    if (warning) warning.hidden = !large;
  }

  function refresh() {
    const mine = ++seq;
    status.textContent = "…";
    window.mktFetch(data.previewUrl, { method: "POST", body: JSON.stringify(payload()) })
      .then(function (response) {
        if (!response.ok) throw new Error(String(response.status));
        return response.json();
      })
      .then(function (result) {
        if (mine !== seq) return; // a newer request is on its way
        frame.srcdoc = result.html;
        $("preview-subject").textContent = result.subject;
        $("preview-text").textContent = result.text;
        showSize(result.size_bytes, result.large);
        showUnknown(result);
        status.textContent = "";
        frame.setAttribute("data-rendered", String(mine));
      })
      .catch(function () {
        if (mine === seq) status.textContent = data.text.failed;
      });
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  }

  Object.keys(fields).forEach(function (name) {
    const node = fields[name];
    if (!node) return;
    node.addEventListener("input", schedule);
    node.addEventListener("focus", function () { lastFocused = node; });
  });

  // Insert {{variable}} at the cursor of the field used last (the body by default).
  document.addEventListener("click", function (event) {
    const button = event.target.closest("[data-insert]");
    if (!button) return;
    const node = lastFocused || fields.html;
    const token = button.getAttribute("data-insert");
    const start = node.selectionStart != null ? node.selectionStart : node.value.length;
    const end = node.selectionEnd != null ? node.selectionEnd : start;
    node.value = node.value.slice(0, start) + token + node.value.slice(end);
    node.focus();
    node.selectionStart = node.selectionEnd = start + token.length;
    schedule();
  });

  // "Preview as": search contacts by email or name, pick one, re-render as that contact.
  const search = $("preview-contact-search");
  const results = $("preview-contact-results");
  const current = $("preview-contact-current");
  let searchTimer = null;
  function pick(item) {
    contactId.value = item ? String(item.id) : "";
    if (testContactId) testContactId.value = contactId.value;
    current.textContent = item ? item.email + (item.name ? " · " + item.name : "") : data.text.nobody;
    results.hidden = true;
    results.innerHTML = "";
    refresh();
  }
  function renderResults(items) {
    results.innerHTML = "";
    const rows = items.length ? items : [null];
    rows.forEach(function (item) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "btn small";
      if (item) {
        button.textContent = item.email + (item.name ? " · " + item.name : "");
        button.setAttribute("data-contact-id", String(item.id));
        button.addEventListener("click", function () { pick(item); });
      } else {
        button.textContent = data.text.noContact;
        button.disabled = true;
      }
      li.appendChild(button);
      results.appendChild(li);
    });
    if (contactId.value) {
      const li = document.createElement("li");
      const clear = document.createElement("button");
      clear.type = "button";
      clear.className = "btn small";
      clear.textContent = data.text.nobody;
      clear.addEventListener("click", function () { pick(null); });
      li.appendChild(clear);
      results.appendChild(li);
    }
    results.hidden = false;
  }
  if (search) {
    search.addEventListener("input", function () {
      clearTimeout(searchTimer);
      const q = search.value.trim();
      if (!q) { results.hidden = true; return; }
      searchTimer = setTimeout(function () {
        window.mktFetch(data.contactsUrl + "?q=" + encodeURIComponent(q), { method: "GET" })
          .then(function (r) { return r.json(); })
          .then(function (body) { renderResults(body.items || []); })
          .catch(function () { results.hidden = true; });
      }, 250);
    });
  }
})();
