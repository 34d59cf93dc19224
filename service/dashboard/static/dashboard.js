// Short polling: every element with data-live is refreshed from that URL (a server-rendered
// fragment) every data-poll-ms of <body>. The job page reloads once when its job reaches a
// final state (to show the output previews); a lost session reloads (to the login form).
"use strict";
(function () {
  const period = parseInt(document.body.dataset.pollMs || "1000", 10);

  function finalNow(el) {
    const status = el.querySelector("[data-final]");
    return status && status.dataset.final === "yes";
  }

  async function refresh(el) {
    let answer;
    try {
      answer = await fetch(el.dataset.live, { credentials: "same-origin" });
    } catch (e) {
      return true; // the gateway is restarting: try again next time
    }
    if (answer.status === 401) { window.location.reload(); return false; }
    if (!answer.ok) return true;
    const wasFinal = finalNow(el);
    el.innerHTML = await answer.text();
    el.dataset.refreshed = String(Date.now());
    if (el.dataset.status === undefined) return true; // the job list: always live
    if (finalNow(el) && !wasFinal) {
      window.location.reload(); // the job ended: show its outputs
      return false;
    }
    return !finalNow(el);
  }

  function poll(el) {
    if (el.dataset.status !== undefined && finalNow(el)) return; // a finished job does not change
    setTimeout(async function tick() {
      if (document.hidden || await refresh(el)) setTimeout(tick, period);
    }, period);
  }

  document.querySelectorAll("[data-live]").forEach(poll);
})();
