// banditctl dashboard: plain DOM and inline SVG, refreshed every few seconds.
// Every figure carries data-value (the API's number) next to its formatted text.
// Every figure covers the window chosen in the header (?window_s= on each request).
"use strict";

const REFRESH_MS = 3000;
const WINDOWS = { "300": 300, "3600": 3600, "86400": 86400, all: null };
const DEFAULT_WINDOW = "3600";
const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"];
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
function pm(ci, d) { return ci ? ` ± ${fixed((ci[1] - ci[0]) / 2, d)}` : ""; }
function figure(el, value, text) {
  el.textContent = text;
  if (isNum(value)) el.dataset.value = String(value); else delete el.dataset.value;
}
function metric(name) { return document.querySelector(`[data-metric="${name}"]`); }
function when(iso) {
  if (!iso) return "–";
  return new Date(iso).toLocaleTimeString([], { hour12: false });
}
const clock = (s) => new Date(s * 1000).toLocaleTimeString([], { hour12: false });
function armColor(i) { return PALETTE[i % PALETTE.length]; }

async function api(path, init = {}) {
  // the key typed below (read or admin scope) goes with every call, unless one is given
  const key = sessionStorage.getItem("banditctl-admin-key");
  const headers = { ...(init.headers || {}) };
  if (key && !headers.Authorization) headers.Authorization = `Bearer ${key}`;
  const r = await fetch(path, { ...init, headers });
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

// -- the window -----------------------------------------------------------------

function windowKey() {
  const m = /window=([a-z0-9]+)/.exec(location.hash);
  return m && m[1] in WINDOWS ? m[1] : DEFAULT_WINDOW;
}
function windowQuery(sep = "?") {
  const s = WINDOWS[windowKey()];
  return s === null ? "" : `${sep}window_s=${s}`;
}
// "decisions in the last hour" / "decisions, all time"
function inWindow(noun, w) { return w && w.seconds !== null ? `${noun} in the ${w.label}` : `${noun}, all time`; }

function renderScope(w) {
  const key = windowKey();
  for (const b of document.querySelectorAll(".windows button")) b.classList.toggle("on", b.dataset.window === key);
  for (const el of document.querySelectorAll(".wname")) el.textContent = w.seconds === null ? "(all time)" : `(${w.label})`;
  const span = w.since ? `the ${w.label}: decisions made from ${when(w.since)} to ${when(w.until)}` : "all time: every decision logged";
  $("scope").textContent = `Showing ${span}. Learner lag and the policy version are as of now.`;
  $("scope").dataset.window = key;
}

// -- charts ---------------------------------------------------------------------

const SVGNS = "http://www.w3.org/2000/svg";
function S(parent, tag, attrs, text) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  parent.append(el);
  return el;
}
function tip(el, text) { S(el, "title", {}, text); return el; }

function niceTicks(lo, hi, count = 5, minStep = 0) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = Math.max(minStep, (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag);
  const out = [];
  for (let v = Math.floor(lo / step) * step; v <= hi + step * 0.5; v += step) out.push(Number(v.toPrecision(12)));
  if (out.length && out[out.length - 1] < hi) out.push(Number((out[out.length - 1] + step).toPrecision(12)));
  return out;
}
const TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
function timeTicks(lo, hi, count) {
  const raw = (hi - lo) / count;
  const step = TIME_STEPS.find((s) => s >= raw) || 86400 * Math.ceil(raw / 86400);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
  const long = hi - lo > 86400;
  const fmt = (s) => {
    const d = new Date(s * 1000);
    const t = d.toLocaleTimeString([], step >= 60
      ? { hour: "2-digit", minute: "2-digit", hour12: false }
      : { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
    return long ? `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${t}` : t;
  };
  return { ticks: out, fmt };
}
function defaultFmt(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1000) return int(v);
  if (a >= 100) return v.toFixed(0);
  if (a < 1e-5) return v.toExponential(1);
  return Number(v.toPrecision(3)).toString();
}

function legend(items) {
  return h("div", { class: "legend" }, items.map((it) => h("span", {},
    h("span", { class: "swatch" + (it.dashed ? " dashed" : "") + (it.box ? " box" : ""),
      style: it.dashed ? `border-color:${it.color}` : `background:${it.color}` }), it.name)));
}

// One chart: x is time (epoch seconds), lines and dashed reference lines, or stacked
// bars; hover columns (x0..x1) carry a <title> with the slice's values.
function plot(o) {
  const W = o.width || 1000, H = o.height || 240, L = 70, R = 16, T = 12, B = 42;
  const svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  if (o.label) svg.setAttribute("aria-label", o.label);
  const series = (o.series || []).map((s) => ({ ...s, points: s.points.filter((p) => isNum(p.x) && isNum(p.y)) }));
  const refs = (o.refs || []).filter((r) => isNum(r.y));
  const ys = [...series.flatMap((s) => s.points.map((p) => p.y)), ...refs.map((r) => r.y)];
  const xs = [...series.flatMap((s) => s.points.map((p) => p.x)),
    ...[...(o.columns || []), ...(o.stacked || [])].flatMap((c) => [c.x0, c.x1])].filter(isNum);
  S(svg, "text", { class: "title", x: 14, y: (T + H - B) / 2, transform: `rotate(-90 14 ${(T + H - B) / 2})`, "text-anchor": "middle" }, o.yLabel || "");
  S(svg, "text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, o.xLabel || "time");
  if (!xs.length || (!ys.length && !o.stacked)) {
    S(svg, "line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B });
    S(svg, "line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B });
    S(svg, "text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle" }, "no data in this window");
    return svg;
  }
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  let y0, y1, yt;
  if (o.stacked) { y0 = 0; y1 = 1; yt = [0, 0.25, 0.5, 0.75, 1]; } else {
    y0 = Math.min(...ys); y1 = Math.max(...ys);
    if (o.yZero) y0 = Math.min(0, y0);
    if (y1 === y0 && o.yZero && y0 === 0) y1 = o.integer ? 1 : 0.001;
    else if (y1 === y0) { const pad = Math.abs(y0) * 0.1 || 0.5; y0 -= pad; y1 += pad; }
    yt = niceTicks(y0, y1, 5, o.integer ? 1 : 0);
    y0 = Math.min(y0, yt[0]); y1 = Math.max(y1, yt[yt.length - 1]);
  }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const fmtY = o.fmtY || defaultFmt;
  for (const v of yt) {
    S(svg, "line", { class: "gridline", x1: L, x2: W - R, y1: sy(v), y2: sy(v) });
    S(svg, "text", { x: L - 6, y: sy(v) + 4, "text-anchor": "end" }, fmtY(v));
  }
  const tt = timeTicks(x0, x1, Math.max(3, Math.floor((W - L - R) / 110)));
  for (const v of tt.ticks) {
    S(svg, "line", { class: "axis", x1: sx(v), x2: sx(v), y1: H - B, y2: H - B + 4 });
    S(svg, "text", { x: sx(v), y: H - B + 16, "text-anchor": "middle" }, tt.fmt(v));
  }
  if (o.stacked) {
    for (const c of o.stacked) {
      let acc = 0;
      for (const part of c.parts) {
        if (!part.value) continue;
        const r = S(svg, "rect", { x: sx(c.x0), width: Math.max(1, sx(c.x1) - sx(c.x0) - 1), y: sy(acc + part.value), height: sy(acc) - sy(acc + part.value), fill: part.color });
        tip(r, part.title);
        acc += part.value;
      }
    }
  }
  for (const r of refs) {
    const el = S(svg, "line", { class: "ref", x1: L, x2: W - R, y1: sy(r.y), y2: sy(r.y), stroke: r.color });
    tip(el, r.title);
  }
  for (const s of series) {
    if (s.points.length > 1) {
      S(svg, "polyline", { class: "line", stroke: s.color, ...(s.dash ? { "stroke-dasharray": s.dash } : {}), points: s.points.map((p) => `${sx(p.x)},${sy(p.y)}`).join(" ") });
    }
    for (const p of s.points) {
      const c = S(svg, "circle", { class: "dot" + (p.mark ? " " + p.mark : ""), cx: sx(p.x), cy: sy(p.y), r: p.r || 2.5, fill: s.color });
      if (p.title) tip(c, p.title);
    }
  }
  S(svg, "line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B });
  S(svg, "line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B });
  for (const c of o.columns || []) {
    tip(S(svg, "rect", { class: "hover", x: sx(c.x0), width: Math.max(2, sx(c.x1) - sx(c.x0)), y: T, height: H - T - B }), c.title);
  }
  return svg;
}

// the 95% interval of each arm on one scale: a dot at the mean, a bar for the interval
function whisker(a, dom, baseline) {
  const W = 140, H = 14;
  const svg = document.createElementNS(SVGNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("width", W);
  svg.setAttribute("height", H);
  if (!isNum(a.mean_reward) || !dom) return svg;
  const sx = (v) => 4 + ((Math.min(Math.max(v, dom[0]), dom[1]) - dom[0]) / (dom[1] - dom[0])) * (W - 8);
  if (a.reward_ci) {
    const [lo, hi] = a.reward_ci;
    const clipped = lo < dom[0] || hi > dom[1];
    tip(S(svg, "line", { class: "ci" + (clipped ? " clipped" : ""), x1: sx(lo), x2: sx(hi), y1: H / 2, y2: H / 2 }),
      `95% CI ${fixed(lo, 3)} – ${fixed(hi, 3)} (n ${a.reward_n})`);
  }
  tip(S(svg, "circle", { class: "mean" + (baseline ? " baseline" : ""), cx: sx(a.mean_reward), cy: H / 2, r: 3.5 }),
    `mean ${fixed(a.mean_reward, 3)}`);
  return svg;
}

// -- sections -------------------------------------------------------------------

let lastOverview = null;

function renderOverview(o) {
  lastOverview = o;
  const w = o.window;
  renderScope(w);
  metric("requests-label").textContent = inWindow("decisions", w);
  figure(metric("requests"), o.requests, int(o.requests));
  metric("answered-note").textContent = `${int(o.answered)} answered, ${int(o.errors)} errors, ${int(o.feedback)} feedback rows`;
  figure(metric("mean_reward"), o.mean_reward, fixed(o.mean_reward, 3));
  const b = o.baseline;
  const d = o.reward_vs_baseline;
  metric("reward-note").textContent = b
    ? `${b.arm} (best arm): ${fixed(b.mean_reward, 3)}` + (isNum(d) ? `; ${fixed(Math.abs(d), 3)} ${d >= 0 ? "above" : "below"}` : "")
    : "no credited decisions in this window";
  const vs = b ? b.arm : "best arm";
  for (const [key, unit, digits] of [["cost", "$", 6], ["energy", "J", 1]]) {
    const c = o[key] || {};
    metric(`${key}-label`).textContent = `${key} per answer vs ${vs}`;
    const fig = metric(key);
    figure(fig, c.ratio, c.figure || "–");
    fig.classList.toggle("better", isNum(c.ratio) && c.ratio <= 1);
    fig.classList.toggle("worse", isNum(c.ratio) && c.ratio > 1);
    const money = (v) => unit === "$" ? `$${fixed(v, digits)}` : `${fixed(v, digits)} J`;
    metric(`${key}-note`).textContent = b ? `${money(c.ours)} vs ${money(c.theirs)} (${b.arm})` : "no credited decisions in this window";
  }
  const ex = o.exploration || {};
  figure(metric("exploration"), ex.rate, pct(ex.rate));
  metric("exploration-note").textContent = ex.decisions ? `of the newest ${int(ex.decisions)} decisions in the window` : "no decisions in this window";
  const lag = o.learner_lag || {};
  figure(metric("lag_events"), lag.events_behind, `${int(lag.events_behind)} events`);
  figure(metric("lag_seconds"), lag.seconds_behind, `${fixed(lag.seconds_behind, 1)} s behind`);
  const ln = o.learner || {};
  figure(metric("policy_version"), ln.version, ln.version ? `v${ln.version}` : "none");
  metric("learner-note").textContent = `${int(ln.events_applied)} events applied (all time), ${fixed(ln.events_per_s, 1)}/s`;
  const el = $("baseline");
  el.replaceChildren();
  if (b) {
    el.dataset.arm = b.arm;
    el.append("Baseline of the cards: ", h("b", {}, b.arm), `, the best arm ${w.seconds === null ? "over all time" : `in the ${w.label}`}: ${b.rule}. `,
      `Its mean reward ${fixed(b.mean_reward, 3)}${b.reward_ci ? ` (95% CI ${fixed(b.reward_ci[0], 3)}–${fixed(b.reward_ci[1], 3)})` : ""} over ${int(b.reward_n)} credited decisions. `,
      h("span", { id: "baseline-mix" }),
      h("span", { class: "muted" }, "It served its own mix of requests, not all of them, so this is an estimate, not a replay (the demo's \"always <model>\" replays every model on every request)."));
  } else {
    delete el.dataset.arm;
    el.append("Baseline: none yet (no arm has credited decisions in this window).");
  }
  renderArms(o);
}

function renderArms(o) {
  const body = $("arms-body");
  const arms = o.arms || [];
  body.replaceChildren();
  $("arms-empty").hidden = arms.some((a) => a.decisions > 0);
  const ln = o.learner || {};
  $("arms-count").textContent = arms.length ? `${arms.length} arms; policy v${ln.version || 0} (${ln.kind})` : "";
  const maxShare = Math.max(0.0001, ...arms.map((a) => a.share || 0));
  const means = arms.filter((a) => isNum(a.mean_reward)).map((a) => a.mean_reward);
  let dom = null;
  if (means.length) {
    const lo = Math.min(...arms.filter((a) => isNum(a.mean_reward)).map((a) => (a.reward_ci ? a.reward_ci[0] : a.mean_reward)));
    const hi = Math.max(...arms.filter((a) => isNum(a.mean_reward)).map((a) => (a.reward_ci ? a.reward_ci[1] : a.mean_reward)));
    dom = [Math.max(lo, Math.min(...means) - 0.5), Math.min(hi, Math.max(...means) + 0.5)];
    if (dom[1] - dom[0] < 1e-9) dom = [dom[0] - 0.1, dom[1] + 0.1];
  }
  arms.forEach((a, i) => {
    const cell = (v, text, attrs) => h("td", { class: "num", "data-value": isNum(v) ? v : null, ...(attrs || {}) }, text);
    body.append(h("tr", { "data-arm": a.arm, class: a.baseline ? "baseline" : null },
      h("td", {}, h("span", { class: "swatch-dot", style: `color:${armColor(i)}` }, "■ "), a.arm, a.baseline ? h("span", { class: "badge", title: "the baseline of the cards" }, "best arm") : null),
      cell(a.decisions, int(a.decisions)),
      h("td", { "data-value": a.share },
        h("div", { class: "share" },
          h("div", { class: "track" }, h("div", { class: "bar", style: `width:${(100 * (a.share || 0)) / maxShare}%` })),
          h("span", {}, pct(a.share)))),
      cell(a.mean_reward, isNum(a.mean_reward) ? fixed(a.mean_reward, 3) + pm(a.reward_ci, 3) : "–",
        { "data-ci-low": a.reward_ci ? a.reward_ci[0] : null, "data-ci-high": a.reward_ci ? a.reward_ci[1] : null }),
      h("td", {}, whisker(a, dom, a.baseline)),
      cell(a.reward_n, int(a.reward_n)),
      cell(a.mean_quality, fixed(a.mean_quality, 3)),
      cell(a.mean_energy_j, fixed(a.mean_energy_j, 2)),
      cell(a.mean_latency_ms, fixed(a.mean_latency_ms, 1)),
      cell(a.mean_cost_usd, fixed(a.mean_cost_usd, 6)),
      cell(a.policy_pulls, int(a.policy_pulls))));
  });
}

function renderRouting(r) {
  const tasks = r.tasks || [];
  const arms = r.arms || [];
  $("routing-empty").hidden = tasks.length > 0;
  const head = $("routing-head");
  head.replaceChildren(h("tr", {},
    h("th", {}, "task"), h("th", { class: "num", title: "Decisions of the task in the window" }, "decisions"),
    arms.map((a) => h("th", { "data-arm": a }, a)),
    h("th", { title: "The task's best arm by the observed mean reward (the baseline's rule)" }, "best observed")));
  const body = $("routing-body");
  body.replaceChildren();
  for (const t of tasks) {
    const cells = t.cells.map((c) => {
      const pref = c.arm === t.preferred;
      const est = isNum(c.estimate) ? fixed(c.estimate, 3) + pm(c.estimate_ci, 3) : "–";
      const obs = c.reward_n ? `seen ${fixed(c.mean_reward, 3)}${pm(c.reward_ci, 3)} (n ${int(c.reward_n)})` : "none credited";
      const title = [
        `${t.task} → ${c.arm}: ${int(c.decisions)} of ${int(t.decisions)} decisions (${pct(c.share)})`,
        isNum(c.estimate) ? `policy estimate ${fixed(c.estimate, 3)}` + (c.estimate_ci ? `, 95% interval ${fixed(c.estimate_ci[0], 3)} – ${fixed(c.estimate_ci[1], 3)}` : "") : "no policy estimate",
        c.reward_n ? `observed mean ${fixed(c.mean_reward, 3)}` + (c.reward_ci ? `, 95% CI ${fixed(c.reward_ci[0], 3)} – ${fixed(c.reward_ci[1], 3)}` : "") + ` over ${int(c.reward_n)} credited` : "no credited decision",
        pref ? (t.preferred_by === "estimate" ? "preferred: the highest estimate" : "preferred: served most (this learner does not choose by its estimates)") : null,
      ].filter(Boolean).join("\n");
      return h("td", { class: "cell" + (pref ? " preferred" : ""), "data-arm": c.arm, "data-share": c.share,
        "data-estimate": isNum(c.estimate) ? c.estimate : null, "data-reward-n": c.reward_n, title },
        h("div", { class: "share" }, h("div", { class: "track" }, h("div", { class: "bar", style: `width:${100 * (c.share || 0)}%` })),
          h("span", { class: "pct" }, (pref ? "★ " : "") + pct(c.share, 0))),
        h("div", { class: "est" }, est),
        h("div", { class: "obs" }, obs));
    });
    body.append(h("tr", { "data-task": t.task, "data-preferred": t.preferred },
      h("td", { class: "task" }, t.task),
      h("td", { class: "num", "data-value": t.decisions }, int(t.decisions)),
      cells,
      h("td", { class: "best-observed" }, t.best_observed ? `[${t.best_observed}]` : "–")));
  }
  const mix = $("baseline-mix");
  const b = lastOverview && lastOverview.baseline;
  if (mix && b) {
    const n = tasks.map((t) => [t.task, (t.cells.find((c) => c.arm === b.arm) || {}).decisions || 0]).filter(([, k]) => k > 0);
    const total = n.reduce((acc, [, k]) => acc + k, 0);
    n.sort((x, y) => y[1] - x[1]);
    mix.textContent = total ? `Its decisions by task: ${n.map(([t, k]) => `${t} ${pct(k / total, 0)}`).join(", ")}. ` : "";
  }
  $("routing-scope").textContent = tasks.length
    ? `${int(r.decisions)} decisions` + (r.capped ? `: the newest ${int(r.limit)} of the window` : ` in the ${r.window.seconds === null ? "whole log" : r.window.label}`)
      + `; policy v${r.policy_version} (${r.learner}). Interval of an estimate: ± 1.96 × ${fixed(r.noise_sd, 3)} (standard deviation of the credited rewards) × the model's width at the task's mean context.`
    : "";
}

function renderVersions(list) {
  const all = (list && list.versions) || [];
  const since = lastOverview && lastOverview.window.since ? Date.parse(lastOverview.window.since) : null;
  const latest = all.length ? all[0].version : null;
  const versions = all.filter((v, i) => i === 0 || since === null || Date.parse(v.created_at) >= since);
  $("versions-count").textContent = `${versions.length} shown (published in the window, and the current one) of ${all.length} listed`;
  const pts = versions.slice().reverse().map((v) => ({
    x: Date.parse(v.created_at) / 1000, y: v.events_applied, r: 3.5,
    mark: v.reason === "rollback" ? "rollback" : null,
    title: `v${v.version} (${v.reason}) at ${when(v.created_at)}: ${int(v.events_applied)} events applied`,
  }));
  $("versions-chart").replaceChildren(
    legend([{ name: "a version: events it had learned from", color: PALETTE[0] }, { name: "rollback", color: "#b91c1c" }]),
    plot({ width: 1000, height: 200, series: [{ name: "versions", color: PALETTE[0], points: pts }],
      yLabel: "events applied", xLabel: "time published", fmtY: (v) => int(v), yZero: true, integer: true, label: "policy versions" }));
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
  ["quality", "quality", "quality (0–1)", 3, "mean_quality"],
  ["cost_usd", "cost per answer", "cost (USD per answer)", 6, "mean_cost_usd"],
  ["energy_j", "energy per answer", "energy (J per answer)", 1, "mean_energy_j"],
  ["latency_ms", "latency per answer", "latency (ms)", 0, "mean_latency_ms"],
];

function renderLearning(lc) {
  const buckets = (lc && lc.buckets) || [];
  $("learning-empty").hidden = buckets.length > 0;
  const o = lastOverview;
  const b = o && o.baseline;
  const armNames = [...new Set([...((o && o.arms) || []).map((a) => a.arm), ...buckets.flatMap((k) => Object.keys(k.arms || {}))])];
  const mid = (k) => (k.start + k.end) / 2;
  const span = (k) => `${clock(k.start)}–${clock(k.end)}`;
  const cols = (fn) => buckets.map((k) => ({ x0: k.start, x1: k.end, title: fn(k) }));
  const wide = $("curves-wide");
  wide.replaceChildren();
  const refColor = "#b45309";
  // reward, with the best arm's mean
  const reward = {
    width: 1100, height: 260, yLabel: "reward (objective)", xLabel: "time (slice of decisions)", label: "reward",
    series: [{ name: "policy", color: PALETTE[0], points: buckets.map((k) => ({ x: mid(k), y: k.reward })) }],
    refs: b ? [{ y: b.mean_reward, color: refColor, title: `${b.arm} (best arm), window mean: ${fixed(b.mean_reward, 3)}` }] : [],
    columns: cols((k) => `${span(k)}: ${int(k.n)} decisions, ${int(k.rewarded)} credited\nreward ${fixed(k.reward, 3)}` + (b ? `\n${b.arm} (best arm, window mean) ${fixed(b.mean_reward, 3)}` : "")),
  };
  wide.append(h("div", { class: "curve", "data-curve": "reward" }, h("h3", {}, "Mean reward per slice"),
    legend([{ name: "policy (mean reward of the slice's credited decisions)", color: PALETTE[0] }].concat(b ? [{ name: `${b.arm}: best arm's mean over the window`, color: refColor, dashed: true }] : [])),
    plot(reward)));
  // traffic share per arm
  const stacked = buckets.map((k) => ({
    x0: k.start, x1: k.end,
    parts: armNames.map((a, i) => {
      const n = (k.arms || {})[a] || 0;
      return { value: k.n ? n / k.n : 0, color: armColor(i), title: `${span(k)}: ${a} ${int(n)} of ${int(k.n)} decisions (${pct(k.n ? n / k.n : 0)})` };
    }),
  }));
  wide.append(h("div", { class: "curve", "data-curve": "share" }, h("h3", {}, "Traffic share per arm per slice"),
    legend(armNames.map((a, i) => ({ name: a, color: armColor(i), box: true }))),
    plot({ width: 1100, height: 220, stacked, yLabel: "share of decisions", xLabel: "time (slice of decisions)", fmtY: (v) => `${Math.round(v * 100)}%`, label: "traffic share" })));
  const box = $("curves");
  box.replaceChildren();
  for (const [key, title, yLabel, digits, bkey] of CURVES) {
    const ref = b && isNum(b[bkey]) ? b[bkey] : null;
    const spec = {
      width: 540, height: 220, yLabel, xLabel: "time", label: title, yZero: key !== "quality",
      series: [{ name: "policy", color: PALETTE[0], points: buckets.map((k) => ({ x: mid(k), y: k[key] })) }],
      refs: ref !== null ? [{ y: ref, color: refColor, title: `${b.arm} (best arm), window mean: ${fixed(ref, digits)}` }] : [],
      columns: cols((k) => `${span(k)}: ${int(k.n)} decisions\n${title} ${fixed(k[key], digits)}` + (ref !== null ? `\n${b.arm} (best arm) ${fixed(ref, digits)}` : "")),
    };
    box.append(h("div", { class: "curve", "data-curve": key }, h("h3", {}, title),
      legend([{ name: "policy", color: PALETTE[0] }].concat(ref !== null ? [{ name: `${b.arm} (best arm)`, color: refColor, dashed: true }] : [])),
      plot(spec)));
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

function ciText(e, d = 3) {
  return e ? `${fixed(e.value, d)} [${fixed(e.ci95[0], d)}, ${fixed(e.ci95[1], d)}]` : "–";
}

function specText(spec) {
  const parts = [];
  if (spec.learner) {
    const { kind, ...fields } = spec.learner;
    parts.push([kind, ...Object.entries(fields).map(([k, v]) => `${k}=${v}`)].join(":"));
  }
  if (spec.objective) parts.push("weights " + Object.entries(spec.objective.weights).map(([k, v]) => `${k}=${v}`).join(","));
  return parts.join(" · ");
}

function renderReleases(r) {
  const cands = (r && r.candidates) || [];
  const log = (r && r.releases) || [];
  const summary = (r && r.summary) || {};
  $("candidates-empty").hidden = cands.length > 0;
  $("releases-count").textContent = `${cands.length} candidate(s), ${int(summary.auto_rollbacks || 0)} automatic rollback(s)`;
  const auto = summary.last_auto_rollback;
  const banner = $("auto-rollback");
  banner.hidden = !auto;
  if (auto) banner.textContent = `automatic rollback at ${when(auto.created_at)}: v${auto.to_version} restores v${auto.estimates.restored}: ${auto.reason}`;
  const body = $("candidates-body");
  body.replaceChildren();
  for (const c of cands) {
    const e = c.estimate || {};
    const gap = e.dr && e.live ? e.dr.ci95[0] - e.live.value : null;
    const btn = h("button", { class: "promote", type: "button", "data-candidate": c.id, disabled: c.status !== "shadow" }, "promote");
    btn.addEventListener("click", () => promote(c.id));
    body.append(h("tr", { "data-candidate": c.id },
      h("td", {}, c.name), h("td", {}, c.status), h("td", { class: "small" }, specText(c.spec)),
      h("td", { class: "num", "data-value": e.n }, int(e.n)),
      h("td", { class: "num", "data-value": e.dr ? e.dr.value : null }, ciText(e.dr)),
      h("td", { class: "num", "data-value": e.live ? e.live.value : null }, ciText(e.live)),
      h("td", { class: "num " + (isNum(gap) && gap > 0 ? "ok" : ""), "data-value": gap }, fixed(gap, 3)),
      h("td", {}, btn)));
  }
  const charts = cands.filter((c) => (c.series || []).length).map((c) => {
    const pts = (key, f) => c.series.filter((p) => p[key]).map((p) => ({
      x: Date.parse(p.t) / 1000, y: f(p[key]),
      title: `${c.name} after ${int(p.n)} decisions: DR ${ciText(p.dr)}, live ${ciText(p.live)}`,
    }));
    return h("div", { class: "curve", "data-candidate": c.id },
      legend([{ name: `${c.name}: DR`, color: PALETTE[1] }, { name: "DR lower bound", color: PALETTE[2] }, { name: "live policy", color: PALETTE[0] }]),
      plot({ width: 480, height: 200, yLabel: "reward per decision", xLabel: "time", label: `${c.name} against the live policy`,
        series: [
          { name: "DR", color: PALETTE[1], points: pts("dr", (e) => e.value) },
          { name: "DR lower", color: PALETTE[2], dash: "4 3", points: pts("dr", (e) => e.ci95[0]) },
          { name: "live", color: PALETTE[0], points: pts("live", (e) => e.value) },
        ] }));
  });
  $("candidates-charts").replaceChildren(...charts);
  $("release-log-body").replaceChildren(...log.map((x) => h("tr", { class: x.key_id === "auto" ? "auto" : null, "data-action": x.action },
    h("td", {}, when(x.created_at)), h("td", {}, x.action + (x.forced ? " (forced)" : "")), h("td", {}, x.key_id || "–"),
    h("td", { class: "num" }, x.candidate_id === null ? "–" : String(x.candidate_id)),
    h("td", { class: "num" }, x.from_version === null ? "–" : `v${x.from_version}`),
    h("td", { class: "num" }, x.to_version === null ? "–" : `v${x.to_version}`),
    h("td", { class: "small" }, x.reason || ""))));
}

// -- actions --------------------------------------------------------------------

async function promote(id) {
  const status = $("promote-status");
  const key = $("admin-key").value.trim();
  sessionStorage.setItem("banditctl-admin-key", key);
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  status.className = "muted";
  status.textContent = `promoting candidate ${id}…`;
  try {
    const r = await api(`/v1/policies/candidates/${id}/promote`, { method: "POST", headers });
    status.className = "ok";
    status.textContent = `published v${r.version}: ${r.reason}`;
  } catch (err) {
    status.className = "err";
    status.textContent = `promotion refused: ${err.message}`;
  }
  await refresh();
}

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
let refreshSeq = 0;
async function refresh() {
  const seq = ++refreshSeq;
  const key = windowKey();
  const q = windowQuery();
  const [ov, rt, vers, lc, res, fb, rel] = await Promise.allSettled([
    api(`/v1/dashboard/overview${q}`), api(`/v1/dashboard/routing${q}`), api("/v1/policies"),
    api(`/v1/dashboard/learning${q}`), api(`/v1/dashboard/residency${q}`), api(`/v1/dashboard/feedback${q}`),
    api("/v1/policies/releases?candidates=true&limit=50"),
  ]);
  if (seq !== refreshSeq) return; // a newer refresh (another window) is under way
  const failures = [];
  const use = (r, fn, name, optional404) => {
    if (r.status === "fulfilled") fn(r.value);
    else if (optional404 && r.reason.status === 404) fn(null);
    else failures.push(`${name}: ${r.reason.message}`);
  };
  use(ov, renderOverview, "overview");
  use(rt, renderRouting, "routing");
  use(vers, renderVersions, "versions");
  use(lc, renderLearning, "learning curves");
  use(res, renderResidency, "residency");
  use(fb, renderFeedback, "feedback");
  use(rel, renderReleases, "releases");
  const banner = $("banner");
  banner.hidden = failures.length === 0;
  banner.textContent = failures.join("; ");
  $("updated").textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
  document.body.dataset.window = key;
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

function schedule() {
  if (timer) clearInterval(timer);
  timer = $("live").checked ? setInterval(refresh, REFRESH_MS) : null;
}

function chooseWindow(key) {
  history.replaceState(null, "", `#window=${key}`);
  for (const b of document.querySelectorAll(".windows button")) b.classList.toggle("on", b.dataset.window === key);
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("admin-key").value = sessionStorage.getItem("banditctl-admin-key") || "";
  $("admin-key").addEventListener("change", () => {
    sessionStorage.setItem("banditctl-admin-key", $("admin-key").value.trim());
    refresh();
  });
  $("live").addEventListener("change", schedule);
  $("try-form").addEventListener("submit", explain);
  for (const b of document.querySelectorAll(".windows button")) b.addEventListener("click", () => chooseWindow(b.dataset.window));
  window.addEventListener("hashchange", refresh);
  loadRoutes();
  refresh();
  schedule();
});
