// The fleet dashboard. Every value the API returns is untrusted text (robots report their own
// version, uploads carry their own task and instruction): it reaches the page only through
// textContent and setAttribute, never as HTML; the server's Content-Security-Policy forbids inline script.
"use strict";
const $ = (s) => document.querySelector(s);
const tokenInput = $("#token");
tokenInput.value = localStorage.getItem("recap-token") || new URLSearchParams(location.hash.slice(1)).get("token") || "";
if (location.hash) history.replaceState(null, "", location.pathname);  // the token does not stay in the address bar
const headers = () => ({ Authorization: "Bearer " + tokenInput.value });
async function api(path) {
  const r = await fetch(path, { headers: headers() });
  if (!r.ok) throw new Error(path + ": " + r.status + " " + (await r.text()));
  return r;
}
const ago = (ns) => ns ? Math.round((Date.now() - ns / 1e6) / 1000) + " s ago" : "never";
const pct = (x) => x == null ? "–" : (100 * x).toFixed(0) + "%";
const when = (ns) => new Date(ns / 1e6).toISOString().replace("T", " ").slice(0, 19);

// el("td", {class: "ok"}, "text", child, ...): attributes by setAttribute, strings as text nodes
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text != null) e.textContent = String(text);
  return e;
}
// one <tr> per item: f(item) -> [row attributes, cells]; a cell is text, a Node, or [attributes, content]
function rows(sel, items, f) {
  $(sel + " tbody").replaceChildren(...items.map(item => {
    const [attrs, cells] = f(item);
    return el("tr", attrs, ...cells.map(c => Array.isArray(c) ? el("td", c[0], c[1]) : el("td", {}, c)));
  }));
}

function plot(svgSel, series, key, label) {
  const svg = $(svgSel), W = +svg.getAttribute("width"), H = +svg.getAttribute("height"), P = 36;
  const pts = Object.entries(series).flatMap(([v, s]) => s.series.filter(p => p[key] != null).map(p => [p.t, p[key]]));
  if (!pts.length) { svg.replaceChildren(svgEl("text", { x: P, y: 20 }, label + ": no data yet")); return; }
  const t0 = Math.min(...pts.map(p => p[0])), t1 = Math.max(...pts.map(p => p[0])) || t0 + 1;
  const y1 = Math.max(...pts.map(p => p[1])) || 1;
  const X = (t) => P + (W - 2 * P) * (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5), Y = (y) => H - P - (H - 2 * P) * y / y1;
  const colours = ["#3b82f6", "#ef4444", "#10b981", "#f59e0b", "#8b5cf6", "#06b6d4", "#84cc16"];
  const out = [svgEl("text", { x: P, y: 14 }, label),
    svgEl("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#999" }),
    svgEl("line", { x1: P, y1: P, x2: P, y2: H - P, stroke: "#999" }),
    svgEl("text", { x: 2, y: P + 4 }, y1.toFixed(2)), svgEl("text", { x: 2, y: H - P }, "0")];
  Object.entries(series).forEach(([v, s], i) => {
    const c = colours[i % colours.length], ps = s.series.filter(p => p[key] != null);
    out.push(svgEl("polyline", { fill: "none", stroke: c, "stroke-width": 2,
                                 points: ps.map(p => X(p.t) + "," + Y(p[key])).join(" ") }));
    ps.forEach(p => out.push(svgEl("circle", { cx: X(p.t), cy: Y(p[key]), r: 3, fill: c })));
    out.push(svgEl("text", { x: W - P - 60, y: P + 14 * i, fill: c, class: "legend" }, v));
  });
  svg.replaceChildren(...out);
}

async function playback(id, cameras, ticks) {
  if (!cameras.length) { $("#playback-title").textContent = id + ": no camera recorded"; return; }
  const cam = cameras[0], step = Math.max(1, Math.floor(ticks / 60));
  $("#playback-title").textContent = `${id} — ${cam}`;
  for (let t = 0; t < ticks; t += step) {
    const blob = await (await api(`/v1/episodes/${encodeURIComponent(id)}/frames/${encodeURIComponent(cam)}/${t}`)).blob();
    $("#playback").src = URL.createObjectURL(blob);
    $("#playback").dataset.tick = t;
    await new Promise(r => setTimeout(r, 60));
  }
}

function bar(fraction) {
  const fill = el("span");
  fill.style.width = (100 * fraction).toFixed(0) + "%";
  return el("span", {}, el("span", { class: "bar" }, fill), " " + pct(fraction));
}

async function refresh() {
  localStorage.setItem("recap-token", tokenInput.value);
  $("#error").textContent = "";
  try {
    const [robots, runs, stats, deployments, episodes, gates, effort, versions] = await Promise.all(
      ["/v1/robots", "/v1/runs", "/v1/stats/versions", "/v1/deployments?limit=50", "/v1/episodes?limit=200",
       "/v1/deployments/gates?limit=50", "/v1/stats/effort", "/v1/versions"]
        .map(p => api(p).then(r => r.json())));
    const side = (s) => s ? `${s.successes}/${s.episodes}, ${s.takeovers_per_robot_hour.toFixed(1)}` : "–";
    const prob = (x) => x == null ? "–" : x.toFixed(2);
    rows("#gates", gates, g => [{ "data-gate": g.id, class: "gate-" + g.status },
      ["#" + g.id, g.version_id, g.robot_id, g.baseline_version || "–",
       [{ class: g.status === "passed" ? "ok" : g.status === "failed" ? "bad" : "muted" }, g.status],
       side(g.figures.canary), side(g.figures.fleet),
       prob(g.figures.p_success_worse) + ", " + prob(g.figures.p_takeovers_worse), g.reason]]);
    const mistake = (f) => f.mistake_to_takeover_s_mean == null ? "unknown"
      : `${f.mistake_to_takeover_s_mean.toFixed(2)} / ${f.mistake_to_takeover_s_median.toFixed(2)} (${f.takeovers_mistake_known} of ${f.takeovers})`;
    const effortRow = ([k, f]) => [{ "data-key": k }, [k, f.episodes, f.takeovers_per_robot_hour.toFixed(1),
      pct(f.correction_tick_share), f.human_minutes.toFixed(1), f.return_on_human_effort.toFixed(2), mistake(f)]];
    rows("#effort-robots", Object.entries(effort.by_robot), effortRow);
    rows("#effort-versions", Object.entries(effort.by_version), effortRow);
    rows("#fleet", robots, r => [{ "data-robot": r.id },
      [r.id, r.group, r.assigned_version || "–", r.reported_version || "–", ago(r.last_seen_ns)]]);
    const calib = (m) => {  // the value function's held-out correlation with realised returns (guard-rail input)
      const c = (m || {}).value_calibration || {};
      const f = (x) => (typeof x === "number" ? x.toFixed(2) : "–");
      return c.held_out ? f(c.spearman) + " / " + f(c.pearson) : "–";
    };
    const fromFailures = (m) => {  // where the positive labels come from (training/recap.py positives_by_source)
      const g = ((m || {}).positives_by_source || {}).policy_failure;
      return g && typeof g.share_of_positives === "number" ? pct(g.share_of_positives) : "–";
    };
    rows("#runs", runs, r => [{ "data-run": r.id },
      [r.id, r.spec.method, r.status, bar(r.progress), r.version_id || "–", calib(r.metrics),
       (r.metrics || {}).fallback ? "weak V: trained as " + r.metrics.fallback.fallback : "",
       fromFailures(r.metrics), JSON.stringify(r.spec.recipe || {})]]);
    rows("#versions", Object.entries(stats), ([v, s]) => [{ "data-version": v },
      [v, s.episodes, pct(s.success_rate), s.throughput_per_h.toFixed(0), pct(s.correction_rate)]]);
    plot("#plot-success", stats, "success_rate", "success rate over time");
    plot("#plot-throughput", stats, "throughput_per_h", "throughput (successes/h) over time");
    rows("#deployments", deployments, d => [{ "data-deployment": d.id },
      [when(d.created_at_ns), d.version_id, d.beta == null ? "artifact" : String(d.beta), d.target_kind + ":" + d.target,
       d.stage, d.created_by, d.note]]);
    rows("#episodes", episodes.slice().reverse(), e => [{ "data-episode": e.id, "data-ticks": e.num_ticks },
      [e.id, e.robot_id, e.task_id, e.instruction,
       [{ class: e.outcome === "success" ? "ok" : e.outcome === "failure" ? "bad" : "muted" }, e.outcome],
       pct(e.correction_rate), e.num_ticks, e.policy_versions.join(", "),
       el("a", { href: "/review#episode=" + encodeURIComponent(e.id), class: "review" }, "review")]]);
    document.querySelectorAll("#episodes tbody tr").forEach(tr => tr.onclick = async () => {
      document.querySelectorAll("#episodes tr.sel").forEach(x => x.classList.remove("sel"));
      tr.classList.add("sel");
      const ep = await (await api(`/v1/episodes/${encodeURIComponent(tr.dataset.episode)}`)).json();
      playback(ep.id, ep.cameras, ep.num_ticks);
    });
    rows("#version-lineage", versions.slice().reverse(), v => [{ "data-version": v.id },
      [v.id, v.policy_type, v.lineage.method || "–", v.parent_version || "–", v.run_id || "(registered)",
       v.lineage.episodes == null ? "–" : v.lineage.episodes, (v.lineage.selection_digest || "").slice(0, 12),
       when(v.created_at_ns), v.created_by]]);
    const curves = await Promise.all(runs.slice(0, 20).map(r =>
      api(`/v1/runs/${encodeURIComponent(r.id)}/scalars?max_points=200`).then(x => x.json()).then(sc => [r, sc])));
    $("#curves").replaceChildren(...curves.filter(([, sc]) => Object.keys(sc).some(t => t.endsWith("/loss"))).map(([r, sc]) => {
      const svg = svgEl("svg", { width: 520, height: 160, "data-run": r.id });
      const series = {};
      for (const [tag, pts] of Object.entries(sc)) {
        if (tag.endsWith("/loss")) series[tag] = { series: pts.map(([t, y]) => ({ t, loss: y })) };
      }
      svg.id = "curve-" + r.id.replace(/[^A-Za-z0-9_-]/g, "_");
      $("#curves").append(svg);
      plot("#" + svg.id, series, "loss", `${r.id} (${r.spec.method}, ${r.status}): loss by step`);
      return svg;
    }));
    document.body.dataset.loaded = "1";
  } catch (e) { $("#error").textContent = e.message; }
}
// The live view: server-sent events from /v1/live, read with fetch() so the token stays in the header.
let liveEvents = 0;
function showLive(state) {
  rows("#live", state.robots, r => [{ "data-robot": r.id, class: r.reported_version !== r.assigned_version ? "muted" : "" },
    [r.id, r.reported_version || "–", r.assigned_version || "–",
     r.recording ? `${r.recording.episode_id} (${r.recording.ticks} ticks)` : "–"]]);
  rows("#live-runs", state.runs, r => [{ "data-run": r.id }, [r.id, r.method, r.status, r.phase, bar(r.progress)]]);
  document.body.dataset.liveEvents = String(++liveEvents);
}
async function live() {
  for (;;) {
    try {
      if (!tokenInput.value) { await new Promise(r => setTimeout(r, 1000)); continue; }
      const r = await api("/v1/live");
      $("#live-status").textContent = "(streaming)";
      const reader = r.body.getReader(), dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter(l => l.startsWith("data: ")).map(l => l.slice(6)).join("\n");
          if (block.startsWith("event: fleet") && data) showLive(JSON.parse(data));
        }
      }
    } catch (e) { $("#live-status").textContent = "(reconnecting: " + e.message + ")"; }
    await new Promise(r => setTimeout(r, 1000));
  }
}
$("#refresh").onclick = refresh;
live();
if (tokenInput.value) refresh();
setInterval(() => tokenInput.value && refresh(), 5000);
