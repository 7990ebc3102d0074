// Saved-view rule editor of the demo CRM: a rules tree built by clicks, with a live match count.
//
// The DOM is the state: every change re-reads the tree from the rows, so what is counted, what
// is saved and what is shown cannot drift apart.  Validation is the server's (the preview-count
// API answers 422 with errors shaped like the tree); this file only places the messages beside
// the rule or group they belong to.  Stable hooks for tests: #rule-editor[data-ready], #match-mode,
// #add-rule, #add-group, .rule-group, .rule, select.rule-field, select.rule-op, .rule-value
// (input[data-list] for lists; two inputs [data-part=from|to] for between), .rule-remove,
// .rule-error, #live-count[data-count], #preset-domestic, #preset-role, #undo-preset.
(function () {
  "use strict";
  const dataEl = document.getElementById("view-editor-data");
  const root = document.getElementById("rule-editor");
  if (!dataEl || !root) return;
  const cfg = JSON.parse(dataEl.textContent);
  const T = cfg.text;
  const readOnly = !!cfg.readOnly;
  const form = document.getElementById("view-form");
  const hidden = document.getElementById("view-rules");
  const countEl = document.getElementById("live-count");
  const statusEl = document.getElementById("live-status");
  const nameEl = document.getElementById("view-name");
  const descEl = document.getElementById("view-description");
  const undoEl = document.getElementById("undo-preset");

  const TEXT_OPS = ["eq", "ne", "contains", "not_contains", "starts_with", "ends_with", "in", "not_in",
    "empty", "not_empty"];
  const DATE_OPS = ["before", "after", "between"];
  const OPS_BY_KIND = {
    text: TEXT_OPS,
    date: DATE_OPS,
    custom: TEXT_OPS.concat(DATE_OPS),
    custom_date: DATE_OPS.concat(["eq", "ne", "in", "not_in", "empty", "not_empty"]),
  };
  const LIST_OPS = ["in", "not_in"];
  const NO_VALUE_OPS = ["empty", "not_empty"];
  const fields = cfg.fields.slice();
  const fieldByKey = {};
  fields.forEach(function (f) { fieldByKey[f.key] = f; });

  function h(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      const value = attrs[key];
      if (value === null || value === undefined || value === false) return;
      if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    if (readOnly && /^(INPUT|SELECT|TEXTAREA)$/.test(node.tagName)) node.disabled = true;
    return node;
  }

  function fieldOf(key) {
    if (!fieldByKey[key]) {  // a field of a stored rule the workspace no longer lists: keep it
      const custom = key.indexOf("custom.") === 0;
      fieldByKey[key] = { key: key, label: key + " " + T.unknownField, kind: custom ? "custom" : "text" };
      fields.push(fieldByKey[key]);
    }
    return fieldByKey[key];
  }

  function opsFor(key) { return OPS_BY_KIND[fieldOf(key).kind] || TEXT_OPS; }

  // ---- building rows ------------------------------------------------------------------------

  function fieldSelect(selected) {
    const select = h("select", { "class": "rule-field", "aria-label": T.field || "Field" });
    fields.forEach(function (f) {
      select.appendChild(h("option", { value: f.key, text: f.label, selected: f.key === selected }));
    });
    return select;
  }

  function opSelect(fieldKey, selected) {
    const select = h("select", { "class": "rule-op", "aria-label": T.operator || "Operator" });
    opsFor(fieldKey).forEach(function (op) {
      select.appendChild(h("option", { value: op, text: cfg.ops[op] || op, selected: op === selected }));
    });
    return select;
  }

  function asList(value) {
    if (Array.isArray(value)) return value.map(String);
    return value === null || value === undefined || value === "" ? [] : [String(value)];
  }

  function valueBox(op, value) {
    const box = h("span", { "class": "rule-value-box" });
    if (NO_VALUE_OPS.indexOf(op) >= 0) return box;
    if (op === "between") {
      const pair = Array.isArray(value) ? value : ["", ""];
      box.appendChild(h("input", { type: "date", "class": "rule-value", value: pair[0] || "",
        dataset: { part: "from" }, "aria-label": cfg.ops.between }));
      box.appendChild(h("span", { "class": "muted", text: T.and }));
      box.appendChild(h("input", { type: "date", "class": "rule-value", value: pair[1] || "",
        dataset: { part: "to" }, "aria-label": T.and }));
    } else if (op === "before" || op === "after") {
      const day = typeof value === "string" ? value : "";
      box.appendChild(h("input", { type: "date", "class": "rule-value", value: day, "aria-label": cfg.ops[op] }));
    } else if (LIST_OPS.indexOf(op) >= 0) {
      // One line with commas; a pasted column (one value per line) is turned into commas.
      box.appendChild(h("input", { type: "text", "class": "rule-value", value: asList(value).join(", "),
        placeholder: T.listHint, title: T.listHint, "aria-label": T.listHint, dataset: { list: "true" } }));
    } else {
      const text = Array.isArray(value) ? (value[0] || "") : (value === null || value === undefined ? "" : String(value));
      box.appendChild(h("input", { type: "text", "class": "rule-value", value: text, maxlength: "500",
        "aria-label": cfg.ops[op] }));
    }
    return box;
  }

  function ruleRow(rule) {
    const key = rule.field || fields[0].key;
    const ops = opsFor(key);
    const op = ops.indexOf(rule.op) >= 0 ? rule.op : ops[0];
    const row = h("div", { "class": "rule", dataset: { kind: fieldOf(key).kind, op: op } }, [
      fieldSelect(key),
      opSelect(key, op),
      valueBox(op, rule.value),
      readOnly ? null : h("button", { type: "button", "class": "btn small rule-remove", text: "×",
        title: T.remove, "aria-label": T.remove }),
      h("div", { "class": "error rule-error", hidden: true, role: "alert" }),
    ]);
    return row;
  }

  function groupBox(group, depth) {
    const isRoot = depth === 1;
    const match = h("select", { "class": "group-match", id: isRoot ? "match-mode" : null, "aria-label": T.matchLabel || "Match" }, [
      h("option", { value: "all", text: T.matchAll, selected: group.match !== "any" }),
      h("option", { value: "any", text: T.matchAny, selected: group.match === "any" }),
    ]);
    match.style.width = "auto";
    const items = h("div", { "class": "group-items" });
    (group.rules || []).forEach(function (item) {
      items.appendChild(item && item.match !== undefined ? groupBox(item, depth + 1) : ruleRow(item || {}));
    });
    const actions = readOnly ? null : h("div", { "class": "toolbar group-actions" }, [
      h("button", { type: "button", "class": "btn small add-rule", id: isRoot ? "add-rule" : null, text: "+ " + T.addRule }),
      depth < cfg.maxDepth ? h("button", { type: "button", "class": "btn small add-group",
        id: isRoot ? "add-group" : null, text: "+ " + T.addGroup }) : null,
    ]);
    return h("div", { "class": "rule-group", dataset: { depth: String(depth) } }, [
      h("div", { "class": "toolbar group-head" }, [
        match,
        isRoot || readOnly ? null : h("button", { type: "button", "class": "btn small danger group-remove", text: T.removeGroup }),
      ]),
      h("div", { "class": "error group-error", hidden: true, role: "alert" }),
      items,
      isRoot ? h("p", { "class": "muted rules-empty", hidden: true }) : null,
      actions,
    ]);
  }

  function render(tree) {
    root.textContent = "";
    root.appendChild(groupBox(tree && tree.rules ? tree : { match: "all", rules: [] }, 1));
    refreshEmptyHint();
  }

  // ---- reading the tree back ---------------------------------------------------------------

  function splitList(text) {
    const seen = {};
    return text.split(/[\n,;，；、]+/).map(function (s) { return s.trim(); }).filter(function (s) {
      if (!s || seen[s]) return false;
      seen[s] = true;
      return true;
    });
  }

  function readRule(row) {
    const rule = { field: row.querySelector(".rule-field").value, op: row.querySelector(".rule-op").value };
    const inputs = row.querySelectorAll(".rule-value");
    if (NO_VALUE_OPS.indexOf(rule.op) >= 0) return rule;
    if (rule.op === "between") rule.value = [inputs[0].value, inputs[1].value];
    else if (LIST_OPS.indexOf(rule.op) >= 0) rule.value = splitList(inputs[0].value);
    else rule.value = inputs[0].value.trim();
    return rule;
  }

  function readGroup(box) {
    const items = box.querySelector(":scope > .group-items").children;
    return {
      match: box.querySelector(":scope > .group-head > .group-match").value,
      rules: Array.prototype.map.call(items, function (item) {
        return item.classList.contains("rule-group") ? readGroup(item) : readRule(item);
      }),
    };
  }

  function tree() { return readGroup(root.querySelector(".rule-group")); }

  // ---- errors beside rules -----------------------------------------------------------------

  function messagesOf(value) {
    if (Array.isArray(value)) return value.map(String);
    if (value && typeof value === "object") {
      return Object.keys(value).reduce(function (all, key) {
        return all.concat(messagesOf(value[key]).map(function (m) { return key + ": " + m; }));
      }, []);
    }
    return value ? [String(value)] : [];
  }

  function clearErrors() {
    root.querySelectorAll(".rule-error, .group-error").forEach(function (node) {
      node.hidden = true;
      node.textContent = "";
    });
    root.querySelectorAll(".has-error").forEach(function (node) { node.classList.remove("has-error"); });
    root.querySelectorAll("[aria-invalid]").forEach(function (node) { node.removeAttribute("aria-invalid"); });
  }

  function say(target, lines) {
    if (!lines.length) return;
    target.textContent = (target.textContent ? target.textContent + " " : "") + lines.join(" ");
    target.hidden = false;
  }

  function showRuleErrors(row, errors) {
    row.classList.add("has-error");
    if (errors && typeof errors === "object" && !Array.isArray(errors)) {
      const controls = { field: ".rule-field", op: ".rule-op", value: ".rule-value" };
      Object.keys(errors).forEach(function (key) {
        row.querySelectorAll(controls[key] || "nothing").forEach(function (c) { c.setAttribute("aria-invalid", "true"); });
        say(row.querySelector(".rule-error"), messagesOf(errors[key]));
      });
    } else {
      say(row.querySelector(".rule-error"), messagesOf(errors));
    }
  }

  function showGroupErrors(box, errors) {
    const own = box.querySelector(":scope > .group-error");
    if (!errors || typeof errors !== "object" || Array.isArray(errors)) {
      say(own, messagesOf(errors));
      return;
    }
    const items = box.querySelector(":scope > .group-items").children;
    Object.keys(errors).forEach(function (key) {
      const value = errors[key];
      if (key !== "rules" || Array.isArray(value) || typeof value !== "object") {
        say(own, messagesOf(value));
        return;
      }
      Object.keys(value).forEach(function (index) {
        const item = items[Number(index)];
        if (!item) say(own, messagesOf(value[index]));
        else if (item.classList.contains("rule-group")) showGroupErrors(item, value[index]);
        else showRuleErrors(item, value[index]);
      });
    });
  }

  // ---- live count --------------------------------------------------------------------------

  let timer = null;
  let sequence = 0;
  let inFlight = null;
  const numberFormat = new Intl.NumberFormat(document.documentElement.lang || undefined);

  function setCount(n) {
    countEl.textContent = n === null ? "—" : numberFormat.format(n);
    countEl.setAttribute("data-count", n === null ? "" : String(n));
  }

  function changed(now) {
    hidden.value = JSON.stringify(tree());
    refreshEmptyHint();
    clearTimeout(timer);
    timer = setTimeout(fetchCount, now ? 0 : 350);
  }

  function fetchCount() {
    const mine = ++sequence;
    if (inFlight) inFlight.abort();
    inFlight = window.AbortController ? new AbortController() : null;
    statusEl.textContent = T.counting;
    countEl.setAttribute("aria-busy", "true");
    window.mktFetch(cfg.previewUrl, {
      method: "POST",
      body: JSON.stringify({ rules: tree() }),
      signal: inFlight ? inFlight.signal : undefined,
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (body) {
        return { status: response.status, body: body };
      });
    }).then(function (result) {
      if (mine !== sequence) return;  // a newer change is being counted
      countEl.removeAttribute("aria-busy");
      clearErrors();
      if (result.status === 200) {
        setCount(result.body.count);
        statusEl.textContent = "";
      } else if (result.status === 422) {
        setCount(null);
        statusEl.textContent = T.invalid;
        const errors = ((result.body.errors || {}).json || {}).rules;
        showGroupErrors(root.querySelector(".rule-group"), errors || messagesOf(result.body.errors));
      } else {
        setCount(null);
        statusEl.textContent = T.failed + (result.body.message ? " (" + result.body.message + ")" : "");
      }
    }).catch(function (error) {
      if (mine !== sequence || (error && error.name === "AbortError")) return;
      countEl.removeAttribute("aria-busy");
      setCount(null);
      statusEl.textContent = T.failed;
    });
  }

  function refreshEmptyHint() {
    const box = root.querySelector(".rule-group");
    const hint = box && box.querySelector(":scope > .rules-empty");
    if (!hint) return;
    const empty = !box.querySelector(":scope > .group-items").children.length;
    hint.hidden = !empty;
    hint.textContent = box.querySelector(":scope > .group-head > .group-match").value === "any" ? T.noRulesAny : T.noRules;
  }

  // ---- interaction -------------------------------------------------------------------------

  function replaceValueBox(row, op, value) {
    row.replaceChild(valueBox(op, value), row.querySelector(".rule-value-box"));
  }

  function keepValue(previous, oldOp, newOp) {
    const kind = function (op) {
      if (NO_VALUE_OPS.indexOf(op) >= 0) return "none";
      if (op === "between") return "range";
      if (op === "before" || op === "after") return "day";
      return LIST_OPS.indexOf(op) >= 0 ? "list" : "text";
    };
    const from = kind(oldOp);
    const to = kind(newOp);
    if (from === to) return previous;
    if (from === "list" && to === "text") return previous[0] || "";
    if (from === "text" && to === "list") return previous ? [previous] : [];
    if (from === "day" && to === "range") return [previous, previous];
    if (from === "range" && to === "day") return previous[0];
    return undefined;
  }

  root.addEventListener("change", function (event) {
    const target = event.target;
    const row = target.closest(".rule");
    // The row remembers the operator its value box was built for (data-op), so a change of
    // field or operator can carry the typed value over when the new box takes the same shape.
    if (row && (target.classList.contains("rule-field") || target.classList.contains("rule-op"))) {
      const oldOp = row.dataset.op;
      const previous = valueFromBox(row.querySelector(".rule-value-box"), oldOp);
      let op = row.querySelector(".rule-op").value;
      if (target.classList.contains("rule-field")) {
        row.dataset.kind = fieldOf(target.value).kind;
        const ops = opsFor(target.value);
        op = ops.indexOf(oldOp) >= 0 ? oldOp : ops[0];
        row.replaceChild(opSelect(target.value, op), row.querySelector(".rule-op"));
      }
      if (op !== oldOp) replaceValueBox(row, op, keepValue(previous, oldOp, op));
      row.dataset.op = op;
    }
    changed(false);
  });

  function valueFromBox(box, op) {
    const inputs = box.querySelectorAll(".rule-value");
    if (!inputs.length) return undefined;
    if (op === "between") return [inputs[0].value, inputs[1].value];
    if (LIST_OPS.indexOf(op) >= 0) return splitList(inputs[0].value);
    return inputs[0].value;
  }

  root.addEventListener("input", function (event) {
    if (event.target.classList.contains("rule-value")) changed(false);
  });

  // A text input drops line breaks, so a column pasted from a spreadsheet would run together.
  root.addEventListener("paste", function (event) {
    const input = event.target;
    if (!input.matches || !input.matches("input.rule-value[data-list]") || !event.clipboardData) return;
    const pasted = event.clipboardData.getData("text");
    if (!/[\r\n]/.test(pasted)) return;
    event.preventDefault();
    const joined = pasted.split(/[\r\n]+/).map(function (s) { return s.trim(); }).filter(Boolean).join(", ");
    const start = input.selectionStart || 0;
    const end = input.selectionEnd || 0;
    const before = input.value.slice(0, start);
    const glue = before && !/[,，;；、]\s*$/.test(before) ? ", " : "";
    input.value = before + glue + joined + input.value.slice(end);
    changed(false);
  });

  root.addEventListener("click", function (event) {
    const button = event.target.closest("button");
    if (!button || readOnly) return;
    const box = button.closest(".rule-group");
    const items = box && box.querySelector(":scope > .group-items");
    if (button.classList.contains("add-rule")) {
      const row = ruleRow({ field: fields[0].key, op: "eq", value: "" });
      items.appendChild(row);
      row.querySelector(".rule-field").focus();
    } else if (button.classList.contains("add-group")) {
      const depth = Number(box.dataset.depth) + 1;
      const group = groupBox({ match: "any", rules: [{ field: fields[0].key, op: "eq", value: "" }] }, depth);
      items.appendChild(group);
      group.querySelector(".rule-field").focus();
    } else if (button.classList.contains("rule-remove")) {
      button.closest(".rule").remove();
    } else if (button.classList.contains("group-remove")) {
      box.remove();
    } else {
      return;
    }
    changed(true);
  });

  // Presets: one click fills the editor with the product documents' one-rule examples.
  let undo = null;
  document.querySelectorAll("button.preset").forEach(function (button) {
    button.addEventListener("click", function () {
      const preset = cfg.presets[button.dataset.preset];
      if (!preset) return;
      undo = { rules: tree(), name: nameEl.value, description: descEl.value };
      render(preset.rules);
      if (!nameEl.value.trim()) nameEl.value = preset.name;
      if (!descEl.value.trim()) descEl.value = preset.description;
      if (undoEl) undoEl.hidden = false;
      changed(true);
    });
  });
  if (undoEl) {
    undoEl.addEventListener("click", function () {
      if (!undo) return;
      render(undo.rules);
      nameEl.value = undo.name;
      descEl.value = undo.description;
      undo = null;
      undoEl.hidden = true;
      changed(true);
    });
  }

  if (form) {
    form.addEventListener("submit", function () { hidden.value = JSON.stringify(tree()); });
  }

  // ---- start -------------------------------------------------------------------------------

  render(cfg.rules);
  if (cfg.ruleErrors) showGroupErrors(root.querySelector(".rule-group"), cfg.ruleErrors);
  root.setAttribute("data-ready", "true");
  hidden.value = JSON.stringify(tree());
  fetchCount();
})();
