// Kiln dashboard: live regions, actions (signed in by cookie, with a CSRF token), the operations tray.
// Plain browser JavaScript, no build step, no dependencies.
(function () {
  "use strict";

  const POLL_MS = 2000;
  const OP_POLL_MS = 700;

  // --- the session: a login cookie scripts cannot read, and this page's CSRF token ---------

  function csrfToken() {
    const meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.content : "";
  }

  function signIn() {
    window.location.assign("/ui/login?next=" +
      encodeURIComponent(window.location.pathname + window.location.search));
  }

  // --- messages ----------------------------------------------------------------------------

  // ``link`` (optional): {href, label}, a page the message leads to (a run just started).
  function message(kind, text, link) {
    const box = document.getElementById("messages");
    if (!box) return;
    const item = document.createElement("div");
    item.className = "message " + kind;
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    const span = document.createElement("span");
    span.textContent = text;
    if (link) {
      const a = document.createElement("a");
      a.href = link.href;
      a.textContent = link.label;
      a.className = "message-link";
      span.append(" ", a);
    }
    const close = document.createElement("button");
    close.type = "button";
    close.setAttribute("aria-label", "dismiss");
    close.textContent = "×";
    close.addEventListener("click", function () { item.remove(); });
    item.append(span, close);
    box.prepend(item);
    while (box.children.length > 3) box.lastChild.remove();
    if (kind !== "error") setTimeout(function () { item.remove(); }, link ? 20000 : 6000);
  }

  // --- live regions: fetch the fragment, patch the DOM in place ---------------------------

  // Patching node by node (instead of replacing innerHTML) keeps buttons and links the
  // operator is pointing at in place while the numbers around them change.
  function morph(from, to) {
    if (from.nodeType !== to.nodeType || from.nodeName !== to.nodeName) {
      from.replaceWith(to);
      return;
    }
    if (from.nodeType === Node.TEXT_NODE || from.nodeType === Node.COMMENT_NODE) {
      if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
      return;
    }
    if (from.nodeType !== Node.ELEMENT_NODE) return;
    // What the operator is typing (a signal's payload) and what the page told them about it
    // belong to the page, not to the server's copy.
    if (from.hasAttribute("data-keep")) return;
    // A traceback the operator opened (or closed) stays so.
    const opened = from.nodeName === "DETAILS" ? from.open : null;
    for (const attr of Array.from(from.attributes)) {
      if (!to.hasAttribute(attr.name)) from.removeAttribute(attr.name);
    }
    for (const attr of Array.from(to.attributes)) {
      if (from.getAttribute(attr.name) !== attr.value) from.setAttribute(attr.name, attr.value);
    }
    if (opened !== null) from.open = opened;
    const a = Array.from(from.childNodes);
    const b = Array.from(to.childNodes);
    const keyed = (n) => n.nodeType === Node.ELEMENT_NODE && (n.id || n.dataset.key) || null;
    if (a.length !== b.length || a.some((n, i) => keyed(n) !== keyed(b[i]))) {
      from.replaceChildren(...b);
      return;
    }
    for (let i = 0; i < a.length; i++) morph(a[i], b[i]);
  }

  let lastOk = 0;
  const lastHtml = new WeakMap();

  async function refresh(region) {
    const response = await fetch(region.dataset.live, {
      headers: { Accept: "text/html" },
      cache: "no-store",
      credentials: "same-origin",
    });
    if (response.status === 401) { signIn(); return; }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const html = await response.text();
    if (html === lastHtml.get(region)) return;
    lastHtml.set(region, html);
    const next = region.cloneNode(false);
    next.innerHTML = html;
    morph(region, next);
  }

  async function refreshAll() {
    const regions = Array.from(document.querySelectorAll("[data-live]"));
    if (!regions.length) return;
    const status = document.getElementById("live-status");
    try {
      await Promise.all(regions.map(refresh));
      applyZoom();
      lastOk = Date.now();
      if (status) {
        status.classList.remove("offline");
        status.textContent = "live · " + new Date(lastOk).toLocaleTimeString();
      }
    } catch (err) {
      if (status) {
        status.classList.add("offline");
        status.textContent = "connection lost, retrying";
      }
    }
  }

  function startPolling() {
    let timer = null;
    const tick = async function () {
      if (!document.hidden) await refreshAll();
      timer = setTimeout(tick, POLL_MS);
    };
    timer = setTimeout(tick, POLL_MS);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { clearTimeout(timer); tick(); }
    });
    window.kilnRefresh = refreshAll;
  }

  // --- actions: calls to the public API, signed in by the cookie -----------------------------

  async function call(method, url, body) {
    const headers = { Accept: "application/json", "X-CSRF-Token": csrfToken() };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
    });
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    return { response: response, data: data };
  }

  function explain(result, what) {
    const status = result.response.status;
    if (status === 401) {
      return "This Kiln needs an API token (401): sign in (you are being taken there), then " +
        what + " again.";
    }
    const detail = result.data && (result.data.message || result.data.error);
    return "Could not " + what + " (HTTP " + status + ")" + (detail ? ": " + detail : ".");
  }

  async function runAction(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    const what = button.dataset.describe || "do that";
    const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
    button.disabled = true;
    try {
      const result = await call(button.dataset.method || "POST", button.dataset.action, body);
      if (!result.response.ok) {
        message("error", explain(result, what));
        if (result.response.status === 401) setTimeout(signIn, 1500);
        return;
      }
      // The operator got past whatever went wrong before: drop the old complaints.
      document.querySelectorAll("#messages .message.error").forEach((m) => m.remove());
      if (result.data && result.data.ic_id) trackOperation(result.data.ic_id, what);
      else if (button.dataset.opens && result.data && result.data.id !== undefined) {
        const href = button.dataset.opens.replace("{id}", encodeURIComponent(result.data.id));
        message("info", "Done: " + what + ".", { href: href, label: "Open run " + result.data.id });
      } else message("info", (result.data && result.data.message) || "Done: " + what + ".");
      refreshAll();
    } catch (err) {
      message("error", "Could not " + what + ": the server did not answer (" + err.message + ").");
    } finally {
      button.disabled = false;
    }
  }

  // Each operation the operator started is shown bottom right until it completes or fails.
  function trackOperation(icId, what) {
    const tray = document.getElementById("op-tray");
    const item = document.createElement("div");
    item.className = "op";
    item.dataset.icId = icId;
    const label = document.createElement("span");
    label.textContent = what;
    const badge = document.createElement("span");
    badge.className = "badge st-pending";
    badge.textContent = "pending";
    item.append(label, badge);
    tray.append(item);
    const deadline = Date.now() + 60000;
    const poll = async function () {
      let op = null;
      try {
        const r = await call("GET", "/dispatcher/operation-status/" + encodeURIComponent(icId));
        op = r.response.ok ? r.data : null;
      } catch (e) { op = null; }
      if (op) {
        badge.className = "badge st-" + op.status;
        badge.textContent = op.status;
        if (op.status === "completed" || op.status === "failed") {
          if (op.status === "failed") message("error", "Could not " + what + ": " + op.error);
          refreshAll();
          setTimeout(function () { item.remove(); }, 5000);
          return;
        }
      }
      if (Date.now() < deadline) setTimeout(poll, OP_POLL_MS);
      else label.textContent = what + " (still waiting for a controller)";
    };
    setTimeout(poll, OP_POLL_MS / 2);
  }

  function setupActions() {
    document.addEventListener("click", function (event) {
      const button = event.target.closest("button[data-action]");
      if (button) {
        event.preventDefault();
        runAction(button);
      }
    });
    document.addEventListener("input", function (event) {
      const form = event.target.closest("form[data-signal-form]");
      if (form) formProblem(form, "");  // the complaint was about what is being changed
    });
    document.addEventListener("submit", function (event) {
      const form = event.target.closest("form[data-signal-form]");
      if (!form) return;
      event.preventDefault();
      sendSignal(form);
    });
    document.addEventListener("submit", async function (event) {
      const form = event.target.closest("form[data-action-form]");
      if (!form) return;
      event.preventDefault();
      const policy = form.querySelector("select[name=policy]").value;
      const result = await call(form.dataset.method || "PUT", form.dataset.actionForm, { policy: policy });
      if (result.response.ok) {
        document.querySelectorAll("#messages .message.error").forEach((m) => m.remove());
        message("info", "Scheduling policy is now " + result.data.policy +
          " (was " + result.data.previous_policy + ").");
        refreshAll();
      } else {
        message("error", explain(result, "change the policy"));
      }
    });
  }

  // --- signals: a waiting task's form, its payload checked as JSON before it is sent -------

  function formProblem(form, text) {
    const box = form.querySelector(".form-error");
    const area = form.querySelector("textarea[name=payload]");
    box.textContent = text;
    box.hidden = !text;
    if (text) area.setAttribute("aria-invalid", "true");
    else area.removeAttribute("aria-invalid");
  }

  async function sendSignal(form) {
    const name = form.dataset.signal;
    const area = form.querySelector("textarea[name=payload]");
    const button = form.querySelector("button[type=submit]");
    const text = area.value.trim();
    let payload;
    if (!text) {
      formProblem(form, "Write the payload as JSON, for example {\"approved\": true} (null for none).");
      area.focus();
      return;
    }
    try {
      payload = JSON.parse(text);
    } catch (err) {
      formProblem(form, "The payload is not valid JSON: " + err.message);
      area.focus();
      return;
    }
    formProblem(form, "");
    const what = "send signal " + name + " to " + form.dataset.task;
    button.disabled = true;
    try {
      // JSON.stringify(null) is "null": a payload of null is sent as such, not as no body.
      const result = await call("POST", form.dataset.signalForm, payload);
      if (!result.response.ok) {
        formProblem(form, explain(result, what));
        if (result.response.status === 401) setTimeout(signIn, 1500);
        return;
      }
      const sent = result.data || {};
      area.value = "";
      message("info", sent.woke
        ? "Sent signal " + name + ": " + form.dataset.task + " goes on."
        : "Sent signal " + name + ": kept until a task waits for it.");
      refreshAll();
    } catch (err) {
      formProblem(form, "Could not " + what + ": the server did not answer (" + err.message + ").");
    } finally {
      button.disabled = false;
    }
  }

  // --- the task panel: a task's details beside the run, kept live like the page ----------

  function panelUrl(href) {
    return href + (href.indexOf("?") === -1 ? "?" : "&") + "fragment=1";
  }

  async function openPanel(href) {
    const panel = document.getElementById("task-panel");
    const body = document.getElementById("task-panel-body");
    if (!panel || !body) { window.location.assign(href); return; }
    body.dataset.live = panelUrl(href);
    panel.hidden = false;
    panel.dataset.href = href;
    try {
      await refresh(body);
      body.scrollTop = 0;
      panel.scrollTop = 0;
    } catch (err) {
      message("error", "Could not load the task (" + err.message + ").");
    }
  }

  function closePanel() {
    const panel = document.getElementById("task-panel");
    const body = document.getElementById("task-panel-body");
    if (!panel || panel.hidden) return;
    panel.hidden = true;
    delete body.dataset.live;
    delete panel.dataset.href;
  }

  function setupPanel() {
    document.addEventListener("click", function (event) {
      if (event.target.closest("[data-close-panel]")) { closePanel(); return; }
      const link = event.target.closest("a[data-panel]");
      if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
      if (!document.getElementById("task-panel")) return;  // the task's own page: follow it
      event.preventDefault();
      openPanel(link.getAttribute("href"));
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape") closePanel();
    });
  }

  // --- zooming the graph: its scale survives the live updates ------------------------------

  let zoom = 1;
  const ZOOM_STEP = 1.25;

  function applyZoom() {
    const svg = document.getElementById("dag");
    if (!svg) return;
    const w = parseFloat(svg.dataset.w), h = parseFloat(svg.dataset.h);
    svg.setAttribute("width", (w * zoom).toFixed(1));
    svg.setAttribute("height", (h * zoom).toFixed(1));
  }

  function fitZoom() {
    const svg = document.getElementById("dag");
    const box = document.getElementById("dag-panel");
    if (!svg || !box) return 1;
    const style = getComputedStyle(box);
    const maxH = parseFloat(style.maxHeight) || box.clientHeight;
    const w = parseFloat(svg.dataset.w), h = parseFloat(svg.dataset.h);
    return Math.min(1, (box.clientWidth - 16) / w, (maxH - 16) / h);
  }

  function setupZoom() {
    document.addEventListener("click", function (event) {
      const button = event.target.closest("button[data-zoom]");
      if (!button) return;
      const how = button.dataset.zoom;
      if (how === "fit") zoom = fitZoom();
      else if (how === "in") zoom = Math.min(zoom * ZOOM_STEP, 4);
      else if (how === "out") zoom = Math.max(zoom / ZOOM_STEP, 0.1);
      else zoom = 1;
      applyZoom();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupActions();
    setupPanel();
    setupZoom();
    startPolling();
  });
})();
