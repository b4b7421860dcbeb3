// Episode review. As on the dashboard, every value from the API is untrusted text: it reaches the
// page through textContent and setAttribute only; the Content-Security-Policy forbids inline script.
"use strict";
const $ = (s) => document.querySelector(s);
const hash = new URLSearchParams(location.hash.slice(1));
const tokenInput = $("#token");
tokenInput.value = hash.get("token") || localStorage.getItem("recap-token") || "";
if (hash.get("token")) history.replaceState(null, "", location.pathname + (hash.get("episode") ? "#episode=" + encodeURIComponent(hash.get("episode")) : ""));
const headers = () => ({ Authorization: "Bearer " + tokenInput.value });
async function api(path, init) {
  const r = await fetch(path, { ...(init || {}), headers: { ...headers(), ...((init || {}).headers || {}) } });
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r;
}
const post = (path, body) => api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = String(text);
  return e;
}
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
// who acted -> colour (the legend's classes in dashboard.css use the same)
const SOURCE_COLOURS = { policy: "#3b82f6", correction: "#f59e0b", demonstration: "#10b981", hold: "#ef4444" };
const SERIES = ["#3b82f6", "#ef4444", "#10b981", "#f59e0b", "#8b5cf6", "#06b6d4", "#84cc16", "#64748b"];
const ep = { id: null, ticks: null, labels: [], annotations: [], tick: 0, stretch: [null, null] };

function linePlot(svg, series, label, attrs) {
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), P = 30;
  const n = Math.max(...series.map(s => s.length), 2);
  const vals = series.flat().filter(v => v != null);
  const lo = Math.min(...vals, 0), hi = Math.max(...vals, lo + 1e-6);
  const X = (t) => P + (W - 2 * P) * t / (n - 1), Y = (y) => H - P - (H - 2 * P) * (y - lo) / (hi - lo);
  const out = [svgEl("text", { x: P, y: 12 }, label), svgEl("text", { x: 0, y: P }, hi.toFixed(2)),
               svgEl("text", { x: 0, y: H - P }, lo.toFixed(2))];
  series.forEach((s, i) => {
    const pts = s.map((y, t) => y == null ? null : X(t).toFixed(2) + "," + Y(y).toFixed(2)).filter(p => p);
    out.push(svgEl("polyline", { fill: "none", stroke: SERIES[i % SERIES.length], "stroke-width": 1.5,
                                 points: pts.join(" "), ...(attrs ? attrs(i) : {}) }));
  });
  out.push(svgEl("line", { class: "cursor", x1: X(0), x2: X(0), y1: P, y2: H - P, stroke: "#111", "stroke-dasharray": "3 3" }));
  svg.replaceChildren(...out);
  svg.dataset.x0 = P; svg.dataset.xspan = (W - 2 * P) / (n - 1);
}

function timeline() {
  const svg = $("#timeline"), W = +svg.getAttribute("width"), n = ep.ticks.num_ticks, w = W / Math.max(n, 1);
  const names = ep.ticks.source_names;
  const out = ep.ticks.source.map((s, t) => svgEl("rect", { x: (t * w).toFixed(2), y: 0, width: Math.max(w, 1).toFixed(2),
    height: 28, fill: SOURCE_COLOURS[names[s]] || "#999", "data-tick": t, "data-source": names[s] }));
  for (const a of ep.annotations) {  // bad corrections purple; mistake -> takeover red
    const mistake = a.kind === "mistake";
    out.push(svgEl("rect", { class: mistake ? "mistake-stretch" : "bad-stretch", x: (a.start_tick * w).toFixed(2),
                             y: 30, height: 8, fill: mistake ? "#dc2626" : "#7c3aed",
                             width: Math.max((a.end_tick - a.start_tick + 1) * w, 2).toFixed(2) }));
  }
  out.push(svgEl("line", { class: "cursor", x1: 0, x2: 0, y1: 0, y2: 40, stroke: "#111", "stroke-width": 2 }));
  svg.replaceChildren(...out);
  svg.onclick = (e) => setTick(Math.floor(e.offsetX / w));
}

function valuePlots() {
  $("#runs-none").textContent = ep.labels.length ? "" : "no training run has labelled this episode yet";
  $("#value-plots").replaceChildren(...ep.labels.map(run => {
    const svg = svgEl("svg", { width: 1140, height: 200, "data-run": run.run_id });
    const series = run.values ? [run.values, run.advantages] : [run.advantages];
    linePlot(svg, series, `${run.run_id} (${run.method || "?"}, version ${run.version_id || "–"}): ` +
             (run.values ? "value V(s_t) (blue), advantage A_t (red)" : "advantage A_t") + `, N = ${run.horizon}; green: indicator positive`,
             (i) => ({ class: run.values && i === 0 ? "value" : "advantage" }));
    const W = 1140, P = 30, w = (W - 2 * P) / Math.max(run.indicators.length - 1, 1);
    run.indicators.forEach((pos, t) => { if (pos) svg.append(svgEl("rect", { class: "indicator", x: (P + t * w - w / 2).toFixed(2), y: 188, width: Math.max(w, 1).toFixed(2), height: 8, fill: "#10b981" })); });
    return svg;
  }));
}

async function setTick(t) {
  const n = ep.ticks.num_ticks;
  t = Math.max(0, Math.min(n - 1, t));
  ep.tick = t;
  $("#scrub").value = t;
  const names = ep.ticks.source_names, src = names[ep.ticks.source[t]];
  $("#tick-info").textContent = `tick ${t} (${(ep.ticks.t_s[t] || 0).toFixed(2)} s): ${src}` +
    (ep.ticks.policy_version[t] ? `, policy ${ep.ticks.policy_version[t]}` : "");
  const tw = +$("#timeline").getAttribute("width") / Math.max(n, 1);
  for (const c of document.querySelectorAll("#timeline .cursor")) { c.setAttribute("x1", t * tw); c.setAttribute("x2", t * tw); }
  for (const svg of document.querySelectorAll("#plot-state, #plot-action, #value-plots svg")) {
    const x = +svg.dataset.x0 + t * +svg.dataset.xspan, c = svg.querySelector(".cursor");
    if (c) { c.setAttribute("x1", x); c.setAttribute("x2", x); }
  }
  const cams = ep.ticks.cameras;
  if (cams.length) {
    const blob = await (await api(`/v1/episodes/${encodeURIComponent(ep.id)}/frames/${encodeURIComponent(cams[0])}/${t}`)).blob();
    if (ep.tick !== t) return;
    const img = $("#frame");
    img.onload = () => { img.dataset.tick = t; };
    img.src = URL.createObjectURL(blob);
  }
}

function showEpisode(e) {
  $("#outcome").textContent = e.outcome;
  $("#outcome").className = e.outcome === "success" ? "ok" : e.outcome === "failure" ? "bad" : "muted";
  $("#labeller").textContent = e.outcome_labeller ? "labelled by " + e.outcome_labeller : "";
  $("#summary").textContent = `${e.robot_id}, ${e.task_id}: ${e.num_ticks} ticks, ${e.num_takeovers} takeovers, ` +
    `${e.num_hold_ticks} hold ticks, versions ${e.policy_versions.join(", ") || "–"}` + (e.evaluation ? " (evaluation episode)" : "");
  const fps = ep.ticks ? ep.ticks.fps : e.fps;
  $("#annotations").replaceChildren(...ep.annotations.map(a => el("li", { "data-annotation": a.id, "data-kind": a.kind },
    a.kind === "mistake"
      ? `policy mistake at tick ${a.start_tick}, takeover at ${a.end_tick} (${((a.end_tick - a.start_tick) / fps).toFixed(2)} s later), by ${a.author}: ${a.reason}`
      : `bad correction, ticks ${a.start_tick}–${a.end_tick} (left out of training), by ${a.author}: ${a.reason}`)));
}

async function load(id) {
  $("#error").textContent = "";
  document.body.dataset.loaded = "";
  const q = encodeURIComponent(id);
  const [e, ticks, labels, annotations] = await Promise.all(
    [`/v1/episodes/${q}`, `/v1/episodes/${q}/ticks`, `/v1/episodes/${q}/labels`, `/v1/episodes/${q}/annotations`]
      .map(p => api(p).then(r => r.json())));
  Object.assign(ep, { id, ticks, labels, annotations, stretch: [null, null] });
  $("#stretch").textContent = "–";
  $("#scrub").max = Math.max(ticks.num_ticks - 1, 0);
  $("#no-camera").textContent = ticks.cameras.length ? "" : "no camera recorded";
  showEpisode(e);
  timeline();
  linePlot($("#plot-state"), ticks.state[0] ? ticks.state[0].map((_, d) => ticks.state.map(s => s[d])) : [], "state per dimension");
  linePlot($("#plot-action"), ticks.action[0] ? ticks.action[0].map((_, d) => ticks.action.map(a => a[d])) : [], "action per dimension");
  valuePlots();
  await setTick(0);
  document.body.dataset.loaded = id;
}

async function label(outcome) {
  const e = await (await post(`/v1/episodes/${encodeURIComponent(ep.id)}/label`, { outcome })).json();
  showEpisode(e);
  document.body.dataset.labelled = outcome;
}

async function markBad() {
  const [a, b] = ep.stretch;
  if (a == null || b == null) throw new Error("mark the stretch first: [ at its first tick, ] at its last");
  const reason = $("#reason").value.trim();
  if (!reason) throw new Error("say why the correction is bad (the reason is kept in the catalog)");
  await annotate({ kind: "bad_correction", start_tick: Math.min(a, b), end_tick: Math.max(a, b), reason });
}

async function markMistake() {  // the current tick: where the policy went wrong (the server finds the takeover after it)
  const reason = $("#reason").value.trim() || "policy mistake marked on the review page";
  await annotate({ kind: "mistake", start_tick: ep.tick, reason });
}

async function annotate(body) {
  await post(`/v1/episodes/${encodeURIComponent(ep.id)}/annotations`, body);
  ep.annotations = await (await api(`/v1/episodes/${encodeURIComponent(ep.id)}/annotations`)).json();
  const e = await (await api(`/v1/episodes/${encodeURIComponent(ep.id)}`)).json();
  showEpisode(e);
  timeline();
  await setTick(ep.tick);
  document.body.dataset.marked = String(ep.annotations.length);
}

const guard = (f) => async (...a) => { try { await f(...a); } catch (err) { $("#error").textContent = err.message; } };
document.addEventListener("keydown", guard(async (ev) => {
  if (!ep.ticks || ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement) return;
  const step = ev.shiftKey ? 10 : 1;
  if (ev.key === "ArrowRight") await setTick(ep.tick + step);
  else if (ev.key === "ArrowLeft") await setTick(ep.tick - step);
  else if (ev.key === "s") await label("success");
  else if (ev.key === "f") await label("failure");
  else if (ev.key === "u") await label("unknown");
  else if (ev.key === "[") { ep.stretch[0] = ep.tick; $("#stretch").textContent = `${ep.stretch[0]}–${ep.stretch[1] ?? "?"}`; }
  else if (ev.key === "]") { ep.stretch[1] = ep.tick; $("#stretch").textContent = `${ep.stretch[0] ?? "?"}–${ep.stretch[1]}`; }
  else if (ev.key === "b") await markBad();
  else if (ev.key === "m") await markMistake();
}));
$("#mark-bad").onclick = guard(markBad);
$("#mark-mistake").onclick = guard(markMistake);
$("#scrub").oninput = guard(() => setTick(+$("#scrub").value));
$("#episode").onchange = guard(() => load($("#episode").value));

guard(async () => {
  localStorage.setItem("recap-token", tokenInput.value);
  const list = await (await api("/v1/episodes?limit=500")).json();
  $("#episode").replaceChildren(...list.slice().reverse().map(e => el("option", { value: e.id }, `${e.id} (${e.outcome})`)));
  const want = hash.get("episode") || (list.length ? list[list.length - 1].id : null);
  if (want) { $("#episode").value = want; await load(want); }
})();
