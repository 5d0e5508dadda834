// Lifeboat dashboard: reads /api/v1/status with the tab's token and redraws every few seconds.
"use strict";
(function () {
  const EVERY_MS = 2000;
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs, text) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // A token given in the fragment (#token=...) moves to session storage and out of the address.
  const frag = new URLSearchParams(location.hash.slice(1));
  if (frag.get("token")) {
    sessionStorage.setItem("lifeboat-token", frag.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = () => sessionStorage.getItem("lifeboat-token");
  const detailApp = location.pathname.startsWith("/app/") ? decodeURIComponent(location.pathname.slice(5)) : null;
  let plan = null;
  let shownOp = null;

  function showError(msg) {
    const e = $("#error");
    e.hidden = !msg;
    e.textContent = msg || "";
  }

  function login(msg) {
    $("#login").hidden = false;
    $("#overview").hidden = true;
    $("#detail").hidden = true;
    showError(msg);
  }

  $("#login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("lifeboat-token", $("#token").value.trim());
    $("#login").hidden = true;
    refresh();
  });

  async function api(path, opts) {
    const o = Object.assign({ headers: {} }, opts || {});
    o.headers.Authorization = "Bearer " + token();
    const r = await fetch(path, o);
    let body = null;
    const text = await r.text();
    try { body = JSON.parse(text); } catch (_) { body = text; }
    return { status: r.status, body };
  }

  const fresh = (f) => f && f.state === "fresh";
  function human(secs) {
    if (secs === null || secs === undefined) return "-";
    const s = Math.max(0, Math.round(secs));
    if (s < 120) return s + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return (s / 3600).toFixed(1) + " h";
    return (s / 86400).toFixed(1) + " d";
  }
  const ago = (iso, now) => (iso ? human((now - Date.parse(iso)) / 1000) + " ago" : "-");

  function rpoCell(app) {
    if (!fresh(app.rpo)) return { text: "unknown", cls: "unknown", title: app.rpo.why || "" };
    const r = app.rpo.value;
    if (r.age_seconds === null) return { text: "no recovery point", cls: "rpo-red", title: "" };
    const ratio = r.ratio;
    const cls = ratio === null ? "" : ratio < 1 ? "rpo-green" : ratio <= 2 ? "rpo-amber" : "rpo-red";
    const text = human(r.age_seconds) + (ratio === null ? "" : " (" + ratio.toFixed(2) + "x)");
    return { text, cls, title: "objective " + human(r.objective_seconds) };
  }

  function cells(app, now) {
    const rpo = rpoCell(app);
    const t = app.traffic;
    const b = app.backups;
    const d = app.drill;
    const traffic = !fresh(t) ? "unknown" : t.value === null ? "-" : (t.value.site || "?") + (t.value.agrees ? "" : " (disagrees with the journal)");
    const backup = !fresh(b) ? "unknown" : !b.value.last ? "none" : b.value.last.ok ? "ok " + ago(b.value.last.started, now) : "FAILED (" + b.value.failures_in_a_row + " in a row)";
    const drill = !fresh(d) ? "unknown" : d.value === null ? "never" : (d.value.passed ? "passed " : "FAILED ") + ago(d.value.time, now);
    const level = fresh(app.readiness) ? app.readiness.value.level + " " + app.readiness.value.name : "unknown";
    return [
      ["health", app.health, "health-" + app.health, app.reasons.join("; ")],
      ["rpo", rpo.text, rpo.cls, rpo.title],
      ["active", fresh(app.active) ? app.active.value : "unknown", fresh(app.active) ? "" : "unknown", ""],
      ["traffic", traffic, fresh(t) ? "" : "unknown", fresh(t) && t.value ? t.value.detail : t.why || ""],
      ["backup", backup, fresh(b) ? "" : "unknown", ""],
      ["drill", drill, fresh(d) ? "" : "unknown", ""],
      ["readiness", level, fresh(app.readiness) ? "" : "unknown", fresh(app.readiness) ? app.readiness.value.missing.join("; ") : ""],
    ];
  }

  function drawOverview(s, now) {
    const tbody = $("#apps tbody");
    tbody.replaceChildren();
    for (const app of s.apps) {
      const tr = el("tr", { id: "row-" + app.app });
      const name = el("td", { "data-field": "app" });
      name.appendChild(el("a", { href: "/app/" + encodeURIComponent(app.app) }, app.app));
      tr.appendChild(name);
      for (const [field, text, cls, title] of cells(app, now)) {
        tr.appendChild(el("td", { "data-field": field, class: cls, title }, text));
      }
      tbody.appendChild(tr);
    }
    const r = s.repository;
    $("#repository").textContent = fresh(r)
      ? "repository " + r.value.location + " · last check " + (r.value.last_check ? ago(r.value.last_check, now) : "never recorded")
      : "repository: unknown (" + (r.why || "") + ")";
  }

  async function drawDetail(s, now) {
    const app = s.apps.find((a) => a.app === detailApp);
    if (!app) { showError("no app " + detailApp + " in plan " + s.plan); return; }
    $("#app-name").textContent = app.app + " (" + app.profile + ", " + app.primary + (app.standby ? " → " + app.standby : "") + ")";
    const dl = el("dl");
    const add = (k, v) => { dl.appendChild(el("dt", {}, k)); dl.appendChild(el("dd", { "data-field": k }, v)); };
    for (const [field, text] of cells(app, now)) add(field, text);
    const sb = app.standby_state;
    if (fresh(sb) && sb.value) {
      add("standby", sb.value.site + " (" + sb.value.mode + ")" + (sb.value.staged ? ", holds " + sb.value.staged.slice(0, 8) : ""));
      add("drift", sb.value.drift === null ? "not checked yet" : String(sb.value.drift) + " objects");
      add("images missing", sb.value.images_missing === null ? "not checked yet" : String(sb.value.images_missing));
      add("capacity", sb.value.capacity_fits === null ? "not judged" : sb.value.capacity_fits ? "fits" : "does NOT fit");
    }
    const w = app.watch;
    add("watch", fresh(w) ? w.value.sites.map((x) => x.site + ": " + x.failures + "/" + x.threshold + (x.down ? " DOWN" : "")).join(", ") + " · " + w.value.agreement : "unknown (" + (w.why || "") + ")");
    const op = app.operation;
    add("operation", !fresh(op) ? "unknown" : op.value === null ? "none" : op.value.kind + " step " + op.value.step_number + "/" + op.value.steps + " (" + (op.value.step || "?") + ") " + op.value.status + (op.value.blocked_by ? ": " + op.value.blocked_by + " · resume: " + op.value.resume : ""));
    $("#app-facts").replaceChildren(dl);
    const tbody = $("#ops tbody");
    tbody.replaceChildren();
    const recent = fresh(app.operations) ? app.operations.value.recent : [];
    for (const o of recent) {
      const tr = el("tr");
      for (const v of [ago(o.trigger, now), o.kind, o.to, o.status, human(o.rto_seconds), human(o.rpo_seconds)]) tr.appendChild(el("td", {}, v));
      tbody.appendChild(tr);
    }
    if (recent.length && recent[0].id !== shownOp) {
      shownOp = recent[0].id;
      const r = await api("/api/v1/plans/" + encodeURIComponent(s.plan) + "/apps/" + encodeURIComponent(app.app) + "/operations/" + encodeURIComponent(shownOp));
      if (r.status === 200 && r.body.svg) {
        const doc = new DOMParser().parseFromString(r.body.svg, "image/svg+xml");
        const box = $("#timeline");
        box.replaceChildren(el("p", { class: "muted" }, o_title(recent[0])), document.importNode(doc.documentElement, true));
      }
    }
  }
  const o_title = (o) => o.kind + " " + o.id + " to " + o.to + ": " + o.status;

  async function act(action, body) {
    const out = $("#action-result");
    out.textContent = action + "…";
    const r = await api("/api/v1/plans/" + encodeURIComponent(plan) + "/apps/" + encodeURIComponent(detailApp) + "/" + action, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
    out.textContent = r.status === 202 ? action + " started" : action + " refused (" + r.status + "): " + (r.body && r.body.error ? r.body.error : r.body);
    out.setAttribute("data-status", String(r.status));
    refresh();
  }

  if (detailApp) {
    $("#do-backup").addEventListener("click", () => act("backup"));
    $("#do-drill").addEventListener("click", () => act("drill"));
    $("#confirm").addEventListener("input", () => { $("#do-failover").disabled = $("#confirm").value !== detailApp; });
    $("#do-failover").addEventListener("click", () => act("failover", { confirm: $("#confirm").value }));
  }

  async function refresh() {
    if (!token()) { login(""); return; }
    let r;
    try {
      r = await api("/api/v1/status");
    } catch (e) {
      showError("this server does not answer: " + e);
      return;
    }
    if (r.status === 401) { sessionStorage.removeItem("lifeboat-token"); login("the token was refused: " + (r.body.error || "")); return; }
    if (r.status !== 200) { showError("status: " + r.status + " " + (r.body.error || r.body)); return; }
    showError("");
    const s = r.body;
    plan = s.plan;
    const now = Date.parse(s.generated);
    $("#plan").textContent = "plan " + s.plan;
    $("#control").textContent = s.control ? "instance " + s.control.instance + " (" + s.control.role + (s.control.leader && s.control.role !== "leader" && s.control.role !== "single" ? ", leader " + s.control.leader : "") + ")" : "";
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("#updated").setAttribute("data-generated", s.generated);
    if (detailApp) { $("#detail").hidden = false; await drawDetail(s, now); } else { $("#overview").hidden = false; drawOverview(s, now); }
    // When the first full view was drawn (ms since navigation), for the dashboard benchmark.
    if (window.lifeboatFirstDraw === undefined) window.lifeboatFirstDraw = performance.now();
  }

  refresh();
  setInterval(refresh, EVERY_MS);
})();
