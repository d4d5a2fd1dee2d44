// calsync sync-log page: open links into Airflow's own UI (a DAG, a DAG run) in the Airflow UI
// around this page. The UI frames plugin pages in a sandbox without top navigation, so a
// target="_top" link alone does nothing there; the frame is same-origin, so the click is
// handed to the UI's router (history.pushState + popstate) instead. Standalone (not framed)
// the link works as it is. This file is the page's only script (CSP: script-src 'self').
(function () {
  "use strict";
  document.addEventListener("click", function (event) {
    if (window.top === window || event.defaultPrevented || event.button !== 0) return;
    if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    var link = event.target.closest ? event.target.closest('a[target="_top"]') : null;
    if (!link) return;
    try {
      var top = window.top;
      var url = new URL(link.href, window.location.href);
      if (url.origin !== top.location.origin) return;
      top.history.pushState(null, "", url.pathname + url.search + url.hash);
      top.dispatchEvent(new PopStateEvent("popstate", { state: null }));
      event.preventDefault();
    } catch (e) {
      // no access to the window around us: leave the click to the browser
    }
  });
})();
