(function () {
  "use strict";
  var items = Array.prototype.slice.call(document.querySelectorAll("#gallery .item"));
  var hitBy = document.getElementById("hit-by");
  var missedBy = document.getElementById("missed-by");
  var onlyDisagree = document.getElementById("only-disagreements");
  var onlyErrors = document.getElementById("only-errors");
  var count = document.getElementById("shown-count");
  var empty = document.getElementById("empty");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button.quick"));
  function value(control) { return control ? control.value : ""; }
  function checked(control) { return control ? control.checked : false; }
  function apply() {
    var hit = value(hitBy), miss = value(missedBy);
    var disagree = checked(onlyDisagree), errors = checked(onlyErrors);
    var shown = 0;
    items.forEach(function (item) {
      var hits = item.getAttribute("data-hits").split(",");
      var ok = (hit === "" || hits[Number(hit)] === "1") &&
               (miss === "" || hits[Number(miss)] === "0") &&
               (!disagree || item.getAttribute("data-disagree") === "1") &&
               (!errors || item.getAttribute("data-errors").indexOf("1") !== -1);
      item.hidden = !ok;
      if (ok) { shown += 1; }
    });
    if (count) { count.textContent = shown + " of " + items.length + " images shown"; }
    if (empty) { empty.hidden = shown !== 0; }
    buttons.forEach(function (button) {
      var active = button.getAttribute("data-hit") === hit && button.getAttribute("data-miss") === miss &&
                   (button.getAttribute("data-disagree") === "1") === disagree &&
                   (button.getAttribute("data-errors-only") === "1") === errors;
      button.setAttribute("aria-pressed", active ? "true" : "false");
    });
  }
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      if (hitBy) { hitBy.value = button.getAttribute("data-hit"); }
      if (missedBy) { missedBy.value = button.getAttribute("data-miss"); }
      if (onlyDisagree) { onlyDisagree.checked = button.getAttribute("data-disagree") === "1"; }
      if (onlyErrors) { onlyErrors.checked = button.getAttribute("data-errors-only") === "1"; }
      apply();
    });
  });
  [hitBy, missedBy, onlyDisagree, onlyErrors].forEach(function (control) {
    if (control) { control.addEventListener("change", apply); }
  });
  apply();
})();
