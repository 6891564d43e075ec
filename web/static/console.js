// Outpost console: small progressive enhancements. Every page works without this file;
// it adds confirmations, copy buttons and live regions that refresh themselves.
"use strict";

(function () {
  // Ask before destructive actions (forms marked data-confirm).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // Copy buttons: data-copy="#selector" copies that element's value or text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest ? event.target.closest("[data-copy]") : null;
    if (!button) return;
    var target = document.querySelector(button.getAttribute("data-copy"));
    if (!target) return;
    var text = "value" in target ? target.value : target.textContent;
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      window.setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectText(target); });
    } else {
      selectText(target);
    }
  });

  function selectText(el) {
    if (el.select) { el.focus(); el.select(); return; }
    var range = document.createRange();
    range.selectNodeContents(el);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  // Secrets shown once: select the whole value on focus, so one Ctrl+C takes it.
  document.querySelectorAll("input[data-secret]").forEach(function (input) {
    input.addEventListener("focus", function () { input.select(); });
  });

  // Selects that submit their form when changed (period pickers).
  document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
    select.addEventListener("change", function () { select.form.submit(); });
  });

  // Live regions: re-fetch a server-rendered fragment every few seconds while
  // the tab is visible. Skipped while focus or an open <details> is inside, so
  // keyboard users and readers are never pulled out of what they are doing.
  document.querySelectorAll("[data-live-src]").forEach(function (region) {
    var src = region.getAttribute("data-live-src");
    var every = parseInt(region.getAttribute("data-live-every") || "5000", 10);
    var busy = false;
    var timer = window.setInterval(function () {
      if (busy || document.hidden) return;
      if (region.contains(document.activeElement) || region.querySelector("details[open]")) return;
      busy = true;
      fetch(src, { credentials: "same-origin", headers: { "Accept": "text/html" }, redirect: "manual" })
        .then(function (response) {
          if (response.status !== 200 || response.type === "opaqueredirect") {
            window.clearInterval(timer); // signed out, or gone: stop polling
            return null;
          }
          return response.text();
        })
        .then(function (html) {
          if (html !== null && html !== undefined) region.innerHTML = html;
        })
        .catch(function () { /* a missed refresh is retried next tick */ })
        .finally(function () { busy = false; });
    }, every);
  });

  // Pages that follow a job (a running probe) reload until it is done.
  var refresh = document.querySelector("[data-refresh-every]");
  if (refresh) {
    window.setTimeout(function () { window.location.reload(); },
      parseInt(refresh.getAttribute("data-refresh-every"), 10));
  }
})();
