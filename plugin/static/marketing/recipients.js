// Recipients drill-down: check all rows of the page, keep the "checked rows" count, and confirm
// the buttons that change many contacts (data-confirm-click on the button itself).
(function () {
  "use strict";
  const form = document.getElementById("bulk-form");
  if (!form) return;
  const boxes = function () { return form.querySelectorAll('input[name="ids"]'); };
  const counter = document.getElementById("checked-count");
  const all = document.getElementById("check-page");
  const selected = document.getElementById("scope-selected");
  function update() {
    const checked = Array.prototype.filter.call(boxes(), function (b) { return b.checked; }).length;
    if (counter) counter.textContent = String(checked);
    if (all) all.checked = checked > 0 && checked === boxes().length;
    if (checked && selected) selected.checked = true;
  }
  form.addEventListener("change", function (event) {
    if (event.target === all) boxes().forEach(function (b) { b.checked = all.checked; });
    update();
  });
  form.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-confirm-click]");
    if (button && !window.confirm(button.getAttribute("data-confirm-click"))) event.preventDefault();
  });
  update();
})();
