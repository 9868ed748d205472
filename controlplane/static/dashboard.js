// banditctl dashboard: plain DOM and inline SVG, refreshed every few seconds.
// Every figure carries data-value (the API's number) next to its formatted text.
"use strict";

const REFRESH_MS = 3000;
const $ = (id) => document.getElementById(id);

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// -- formatting (tests format the API's numbers the same way) ------------------

function isNum(v) { return typeof v === "number" && Number.isFinite(v); }
function fixed(v, d) { return isNum(v) ? v.toFixed(d) : "–"; }
function int(v) {
  if (!isNum(v)) return "–";
  return String(Math.round(v)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}
function pct(v, d = 1) { return isNum(v) ? (v * 100).toFixed(d) + "%" : "–"; }
function pctOf(v, d = 1) { return isNum(v) ? v.toFixed(d) + "%" : "–"; }
function figure(el, value, text) {
  el.textContent = text;
  if (isNum(value)) el.dataset.value = String(value); else delete el.dataset.value;
}
function metric(name) { return document.querySelector(`[data-metric="${name}"]`); }
function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return d.toLocaleTimeString([], { hour12: false });
}

async function api(path, init) {
  const r = await fetch(path, init);
  let body = null;
  try { body = await r.json(); } catch (_) { body = null; }
  if (!r.ok) {
    const msg = body && body.error ? body.error.message : r.statusText;
    const err = new Error(`${r.status} ${msg}`);
    err.status = r.status;
    throw err;
  }
  return body;
}

// -- charts ---------------------------------------------------------------------

function lineChart(points, opts = {}) {
  const W = opts.width || 320, H = opts.height || 110, L = 44, R = 8, T = 8, B = 18;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const S = (tag, attrs) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    svg.append(el);
    return el;
  };
  const pts = points.filter((p) => isNum(p.x) && isNum(p.y));
  S("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B });
  S("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B });
  if (!pts.length) {
    S("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle" }).textContent = "no data yet";
    return svg;
  }
  let [x0, x1] = [Math.min(...pts.map((p) => p.x)), Math.max(...pts.map((p) => p.x))];
  let [y0, y1] = [Math.min(...pts.map((p) => p.y)), Math.max(...pts.map((p) => p.y))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 1; y0 -= pad; y1 += pad; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const fmtY = opts.fmtY || ((v) => {
    const a = Math.abs(v);
    if (a >= 100) return v.toFixed(0);
    if (a > 0 && a < 0.01) return v.toExponential(1);
    return v.toPrecision(3);
  });
  S("text", { x: L - 4, y: T + 8, "text-anchor": "end" }).textContent = fmtY(y1);
  S("text", { x: L - 4, y: H - B, "text-anchor": "end" }).textContent = fmtY(y0);
  if (opts.fmtX) {
    S("text", { x: L, y: H - 4 }).textContent = opts.fmtX(x0);
    S("text", { x: W - R, y: H - 4, "text-anchor": "end" }).textContent = opts.fmtX(x1);
  }
  if (pts.length > 1) {
    S("polyline", { class: "line", points: pts.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") });
  }
  for (const p of pts) {
    if (pts.length === 1 || p.mark) {
      const c = S("circle", { class: "dot" + (p.mark ? " " + p.mark : ""), cx: sx(p.x), cy: sy(p.y), r: 3 });
      if (p.title) {
        const t = document.createElementNS("http://www.w3.org/2000/svg", "title");
        t.textContent = p.title;
        c.append(t);
      }
    }
  }
  return svg;
}
const clock = (s) => new Date(s * 1000).toLocaleTimeString([], { hour12: false });

// -- sections -------------------------------------------------------------------

function renderOverview(o) {
  figure(metric("requests"), o.requests, int(o.requests));
  metric("answered-note").textContent = `${int(o.answered)} answered, ${int(o.errors)} errors, ${int(o.feedback)} feedback`;
  figure(metric("mean_reward"), o.mean_reward, fixed(o.mean_reward, 3));
  metric("objective-note").textContent = Object.entries(o.objective || {})
    .filter(([, w]) => w !== 0).map(([c, w]) => `${w} × ${c}`).join(" + ");
  figure(metric("cost_saved_pct"), o.cost_saved_pct, pctOf(o.cost_saved_pct));
  metric("cost-note").textContent = o.best_arm
    ? `$${fixed(o.mean_cost_usd, 6)} vs $${fixed(o.best_arm_mean_cost_usd, 6)} (${o.best_arm})` : "no rated answers yet";
  figure(metric("energy_saved_pct"), o.energy_saved_pct, pctOf(o.energy_saved_pct));
  metric("energy-note").textContent = o.best_arm
    ? `${fixed(o.mean_energy_j, 2)} J vs ${fixed(o.best_arm_mean_energy_j, 2)} J` : "";
  const ex = o.exploration || {};
  figure(metric("exploration"), ex.rate, pct(ex.rate));
  metric("exploration-note").textContent = ex.decisions ? `of the last ${int(ex.decisions)} decisions` : "no decisions yet";
  const lag = o.learner_lag || {};
  figure(metric("lag_events"), lag.events_behind, `${int(lag.events_behind)} events`);
  figure(metric("lag_seconds"), lag.seconds_behind, `${fixed(lag.seconds_behind, 1)} s behind`);
  const ln = o.learner || {};
  figure(metric("policy_version"), ln.version, ln.version ? `v${ln.version}` : "none");
  metric("learner-note").textContent = `${int(ln.events_applied)} events applied, ${fixed(ln.events_per_s, 1)}/s`;
}

function renderArms(p) {
  const body = $("arms-body");
  const arms = Object.entries((p && p.arms) || {});
  body.replaceChildren();
  $("arms-empty").hidden = arms.some(([, a]) => a.pulls > 0 || a.decisions > 0);
  $("arms-count").textContent = arms.length ? `(${arms.length}, policy v${p.version}, ${p.learner})` : "";
  const maxShare = Math.max(0.0001, ...arms.map(([, a]) => a.traffic_share || 0));
  for (const [name, a] of arms) {
    const cell = (v, text) => h("td", { class: "num", "data-value": isNum(v) ? v : null }, text);
    body.append(h("tr", { "data-arm": name },
      h("td", {}, name),
      cell(a.pulls, int(a.pulls)),
      h("td", { "data-value": a.traffic_share },
        h("div", { class: "share" },
          h("div", { class: "track" }, h("div", { class: "bar", style: `width:${(100 * (a.traffic_share || 0)) / maxShare}%` })),
          h("span", {}, pct(a.traffic_share)))),
      cell(a.mean_quality, fixed(a.mean_quality, 3)),
      cell(a.mean_energy_j, fixed(a.mean_energy_j, 2)),
      cell(a.mean_latency_ms, fixed(a.mean_latency_ms, 1)),
      cell(a.mean_cost_usd, fixed(a.mean_cost_usd, 6)),
      cell(a.uncertainty, fixed(a.uncertainty, 3))));
  }
}

function renderVersions(list) {
  const versions = (list && list.versions) || [];
  const latest = versions.length ? versions[0].version : null;
  const pts = versions.slice().reverse().map((v) => ({
    x: Date.parse(v.created_at) / 1000, y: v.events_applied,
    mark: v.reason === "rollback" ? "rollback" : null, title: `v${v.version} ${v.reason}`,
  }));
  $("versions-chart").replaceChildren(lineChart(pts, { fmtX: clock, width: 480, height: 120, fmtY: (v) => v.toFixed(0) }));
  const body = $("versions-body");
  body.replaceChildren();
  for (const v of versions) {
    const btn = h("button", { class: "rollback", type: "button", "data-version": v.version, disabled: v.version === latest },
      v.version === latest ? "current" : "roll back");
    btn.addEventListener("click", () => rollback(v.version));
    body.append(h("tr", { "data-version": v.version },
      h("td", { class: "num" }, `v${v.version}`), h("td", {}, when(v.created_at)),
      h("td", { class: "num", "data-value": v.events_applied }, int(v.events_applied)),
      h("td", {}, v.reason), h("td", {}, btn)));
  }
}

const CURVES = [
  ["reward", "reward", 3], ["quality", "quality", 3], ["cost_usd", "cost $", 6],
  ["energy_j", "energy J", 2], ["latency_ms", "latency ms", 1],
];

function renderLearning(lc) {
  const buckets = (lc && lc.buckets) || [];
  $("learning-empty").hidden = buckets.length > 0;
  const box = $("curves");
  box.replaceChildren();
  for (const [key, label] of CURVES) {
    const pts = buckets.map((b) => ({ x: b.start, y: b[key] }));
    box.append(h("div", { class: "curve", "data-curve": key }, h("h3", {}, label), lineChart(pts, { fmtX: clock })));
  }
}

function renderResidency(res) {
  const replicas = (res && res.replicas) || [];
  $("residency-empty").hidden = replicas.length > 0;
  const box = $("residency-body");
  box.replaceChildren();
  if (!replicas.length) return;
  const totals = h("table", { class: "grid" },
    h("thead", {}, h("tr", {}, ["replica", "epochs", "page-ins", "hits", "misses", "hit rate"].map((t, i) => h("th", { class: i ? "num" : null }, t)))),
    h("tbody", {}, (res.totals || []).map((t) => h("tr", { "data-replica": t.replica },
      h("td", {}, t.replica), h("td", { class: "num" }, int(t.epochs)),
      h("td", { class: "num", "data-value": t.page_ins }, int(t.page_ins)),
      h("td", { class: "num" }, int(t.hits)), h("td", { class: "num" }, int(t.misses)),
      h("td", { class: "num", "data-value": t.hit_rate }, pct(t.hit_rate))))));
  const epochs = [...new Set(replicas.flatMap((r) => r.epochs.map((e) => e.epoch)))].sort((a, b) => a - b).slice(-40);
  const grid = h("div", { class: "resgrid", style: `grid-template-columns: 120px repeat(${epochs.length}, minmax(6px, 1fr))` });
  for (const r of replicas) {
    grid.append(h("div", { class: "rlabel", title: r.replica }, r.replica));
    const by = new Map(r.epochs.map((e) => [e.epoch, e]));
    for (const ep of epochs) {
      const e = by.get(ep);
      const hr = e && isNum(e.hit_rate) ? e.hit_rate : null;
      const color = hr === null ? "" : `background: hsl(${Math.round(120 * hr)}, 55%, 55%)`;
      grid.append(h("div", { class: "cell", style: color, title: e
        ? `epoch ${ep}: ${e.adapters.join(", ") || "(none)"}; hit rate ${pct(hr)}, ${e.page_ins} page-ins (${e.status})`
        : `epoch ${ep}: no plan` }));
    }
  }
  box.append(totals, h("p", { class: "muted small" }, "Epochs (columns) per replica: colour is the hit rate, hover for the resident adapters."), grid);
}

function renderFeedback(fb) {
  const items = (fb && fb.items) || [];
  $("feedback-empty").hidden = items.length > 0;
  const body = $("feedback-body");
  body.replaceChildren();
  for (const f of items) {
    body.append(h("tr", { "data-feedback": f.id },
      h("td", {}, when(f.created_at)), h("td", {}, f.arm_id || "–"), h("td", {}, f.source),
      h("td", { class: "num", "data-value": f.quality }, fixed(f.quality, 2)),
      h("td", {}, f.raw_rating || ""), h("td", { class: "wrap" }, f.comment || ""),
      h("td", { title: f.request_id }, String(f.request_id).slice(0, 8))));
  }
}

// -- actions --------------------------------------------------------------------

async function rollback(version) {
  const status = $("rollback-status");
  const key = $("admin-key").value.trim();
  sessionStorage.setItem("banditctl-admin-key", key);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  status.className = "muted";
  status.textContent = `rolling back to v${version}…`;
  try {
    const r = await api(`/v1/policies/${version}/rollback`, { method: "POST", headers });
    status.className = "ok";
    status.textContent = `published v${r.version} (state of v${r.rolled_back_to})`;
    await refresh();
  } catch (err) {
    status.className = "err";
    status.textContent = `rollback refused: ${err.message}`;
  }
}

async function explain(ev) {
  ev.preventDefault();
  const summary = $("try-summary");
  const body = {
    model: $("try-route").value,
    messages: [{ role: "user", content: $("try-prompt").value }],
  };
  try {
    const r = await api("/v1/route/explain", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    summary.className = "muted";
    summary.textContent = `policy v${r.policy_version} (${r.learner}) would choose ${r.chosen}`;
    summary.dataset.chosen = r.chosen;
    const chosen = r.arms.find((a) => a.arm === r.chosen);
    const rows = r.arms.map((a) => {
      const bonus = isNum(a.score) && isNum(a.mean) ? a.score - a.mean : null;
      let why;
      if (a.pulls === 0) why = "untried: new arms are tried first";
      else if (a.arm === r.chosen) why = isNum(bonus) ? `highest score: mean ${fixed(a.mean, 3)} + bonus ${fixed(bonus, 3)}` : "highest score";
      else why = `score ${fixed(a.score, 3)} < ${fixed(chosen && chosen.score, 3)}` + (isNum(bonus) ? ` (mean ${fixed(a.mean, 3)}, bonus ${fixed(bonus, 3)})` : "");
      const n = (v, d) => h("td", { class: "num", "data-value": isNum(v) ? v : null }, fixed(v, d));
      return h("tr", { class: a.arm === r.chosen ? "chosen" : null, "data-arm": a.arm },
        h("td", {}, a.arm), n(a.score, 3), n(a.mean, 3), n(bonus, 3), n(a.uncertainty, 3),
        n(a.propensity, 2), h("td", { class: "num" }, int(a.pulls)), h("td", {}, why));
    });
    $("try-body").replaceChildren(...rows);
    $("try-table").hidden = false;
  } catch (err) {
    summary.className = "err";
    summary.textContent = `explain failed: ${err.message}`;
  }
}

async function loadRoutes() {
  try {
    const models = await api("/v1/models");
    const sel = $("try-route");
    sel.replaceChildren(...models.data.map((m) => h("option", { value: m.id }, m.id)));
  } catch (_) { /* keep "auto" */ }
}

// -- refresh loop -----------------------------------------------------------------

let timer = null;
async function refresh() {
  const [ov, cur, vers, lc, res, fb] = await Promise.allSettled([
    api("/v1/dashboard/overview"), api("/v1/policies/current"), api("/v1/policies"),
    api("/v1/dashboard/learning"), api("/v1/dashboard/residency"), api("/v1/dashboard/feedback"),
  ]);
  const failures = [];
  const use = (r, fn, name, optional404) => {
    if (r.status === "fulfilled") fn(r.value);
    else if (optional404 && r.reason.status === 404) fn(null);
    else failures.push(`${name}: ${r.reason.message}`);
  };
  use(ov, renderOverview, "overview");
  use(cur, renderArms, "arms", true);
  use(vers, renderVersions, "versions");
  use(lc, renderLearning, "learning curves");
  use(res, renderResidency, "residency");
  use(fb, renderFeedback, "feedback");
  const banner = $("banner");
  banner.hidden = failures.length === 0;
  banner.textContent = failures.join("; ");
  $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = $("live").checked ? setInterval(refresh, REFRESH_MS) : null;
}

document.addEventListener("DOMContentLoaded", () => {
  $("admin-key").value = sessionStorage.getItem("banditctl-admin-key") || "";
  $("live").addEventListener("change", schedule);
  $("try-form").addEventListener("submit", explain);
  loadRoutes();
  refresh();
  schedule();
});
