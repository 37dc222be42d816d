/* django-container-manager's admin pages:
   - the job page redraws its Outcome block and output from live/ while the job is unfinished,
     keeping each output box scrolled to the end unless the reader scrolled up;
   - the job list reloads itself every few seconds while "Auto-refresh" is ticked (remembered
     in this browser) and a job on it is unfinished. */
(function () {
  "use strict";

  function scrollOutputs(root, keep) {
    root.querySelectorAll("pre.cm-output").forEach(function (pre) {
      if (!keep || keep[pre.dataset.stream] !== false) {
        pre.scrollTop = pre.scrollHeight;
      }
    });
  }

  function followJob(box) {
    var every = Number(box.dataset.every) || 2000;
    function tick() {
      fetch(box.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error(String(response.status)); }
          return response.json();
        })
        .then(function (data) {
          var atEnd = {};
          box.querySelectorAll("pre.cm-output").forEach(function (pre) {
            atEnd[pre.dataset.stream] = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          });
          box.innerHTML = data.html;
          box.dataset.terminal = data.terminal ? "true" : "false";
          scrollOutputs(box, atEnd);
          if (!data.terminal) { window.setTimeout(tick, every); }
        })
        .catch(function () { window.setTimeout(tick, every * 3); });
    }
    window.setTimeout(tick, every);
  }

  function autoRefresh(toggle) {
    var key = "container-manager:auto-refresh";
    toggle.checked = window.localStorage.getItem(key) === "on";
    toggle.addEventListener("change", function () {
      window.localStorage.setItem(key, toggle.checked ? "on" : "off");
      schedule();
    });
    var timer = null;
    function schedule() {
      if (timer) { window.clearTimeout(timer); timer = null; }
      var unfinished = document.querySelector('#result_list .cm-badge[data-terminal="false"]');
      if (toggle.checked && unfinished) {
        timer = window.setTimeout(function () { window.location.reload(); }, 5000);
      }
    }
    schedule();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var box = document.getElementById("cm-live");
    if (box) {
      scrollOutputs(box, null);
      if (box.dataset.terminal === "false") { followJob(box); }
    } else {
      scrollOutputs(document, null);
    }
    var toggle = document.getElementById("cm-autorefresh");
    if (toggle) { autoRefresh(toggle); }
  });
})();
