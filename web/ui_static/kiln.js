// Kiln dashboard: live regions, actions with the API token, the operations tray.
// Plain browser JavaScript, no build step, no dependencies.
(function () {
  "use strict";

  const TOKEN_KEY = "kiln.apiToken";
  const POLL_MS = 2000;
  const OP_POLL_MS = 700;

  // --- the API token ---------------------------------------------------------------------

  function token() {
    try { return window.localStorage.getItem(TOKEN_KEY) || ""; } catch (e) { return ""; }
  }

  function showTokenState() {
    const state = document.getElementById("token-state");
    const forget = document.getElementById("token-forget");
    const required = document.body.dataset.tokenRequired === "yes";
    if (!state) return;
    if (token()) {
      state.textContent = "token saved";
      state.className = "token-state ok";
    } else if (required) {
      state.textContent = "actions need a token";
      state.className = "token-state missing";
    } else {
      state.textContent = "";
      state.className = "token-state";
    }
    if (forget) forget.hidden = !token();
  }

  function setupTokenForm() {
    const form = document.getElementById("token-form");
    if (!form) return;
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const input = document.getElementById("token-input");
      const value = input.value.trim();
      if (value) window.localStorage.setItem(TOKEN_KEY, value);
      input.value = "";
      showTokenState();
      if (value) message("info", "API token saved in this browser; actions now send it.");
    });
    document.getElementById("token-forget").addEventListener("click", function () {
      window.localStorage.removeItem(TOKEN_KEY);
      showTokenState();
      message("info", "API token forgotten.");
    });
    showTokenState();
  }

  // --- messages ----------------------------------------------------------------------------

  function message(kind, text) {
    const box = document.getElementById("messages");
    if (!box) return;
    const item = document.createElement("div");
    item.className = "message " + kind;
    item.setAttribute("role", kind === "error" ? "alert" : "status");
    const span = document.createElement("span");
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.setAttribute("aria-label", "dismiss");
    close.textContent = "×";
    close.addEventListener("click", function () { item.remove(); });
    item.append(span, close);
    box.prepend(item);
    while (box.children.length > 3) box.lastChild.remove();
    if (kind !== "error") setTimeout(function () { item.remove(); }, 6000);
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
    for (const attr of Array.from(from.attributes)) {
      if (!to.hasAttribute(attr.name)) from.removeAttribute(attr.name);
    }
    for (const attr of Array.from(to.attributes)) {
      if (from.getAttribute(attr.name) !== attr.value) from.setAttribute(attr.name, attr.value);
    }
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

  // --- actions: calls to the public API with the token ------------------------------------

  async function call(method, url, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (token()) headers.Authorization = "Bearer " + token();
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
      return (token() ? "The saved API token was refused (401)" : "This Kiln needs an API token (401)") +
        ": paste the value of KILN_API_TOKEN into “API token” at the top right, press Save, then " +
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
        return;
      }
      // The operator got past whatever went wrong before: drop the old complaints.
      document.querySelectorAll("#messages .message.error").forEach((m) => m.remove());
      if (result.data && result.data.ic_id) trackOperation(result.data.ic_id, what);
      else message("info", (result.data && result.data.message) || "Done: " + what + ".");
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

  document.addEventListener("DOMContentLoaded", function () {
    setupTokenForm();
    setupActions();
    startPolling();
  });
})();
