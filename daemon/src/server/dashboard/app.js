// The recd dashboard: polls /api/overview and draws jobs, the last day's runs, tables and
// quality; looks up a user's lists on demand. Read-only: it only ever sends GETs.
// Everything from the daemon is put into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 5000;
const SVG = "http://www.w3.org/2000/svg";
const STATUS_COLOURS = {
  ok: "#2e9e50", failed: "#d64236", timeout: "#d64236", gated: "#e0a21b",
  cancelled: "#9aa3ae", skipped: "#c3c9d1", superseded: "#c3c9d1",
};
let overview = null;
let shownRun = null;

// Errors of the page itself are shown on it (and fail the browser test).
function pageError(message) {
  const box = document.getElementById("page-errors");
  box.hidden = false;
  box.textContent += (box.textContent ? "\n" : "") + message;
}
window.addEventListener("error", (e) => pageError(String(e.message)));
window.addEventListener("unhandledrejection", (e) => pageError(String(e.reason)));

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const badge = (status) => el("span", { class: "badge s-" + status }, status);
const when = (iso) => (iso ? new Date(iso).toLocaleString() : "");
const seconds = (s) => (s >= 100 ? s.toFixed(0) : s.toFixed(2)) + " s";
const short = (hash) => (hash ? String(hash).slice(0, 12) : "");

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(url + ": HTTP " + response.status);
  return response.json();
}

async function refresh() {
  try {
    overview = await getJson("/api/overview");
    draw(overview);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (e) {
    document.getElementById("updated").textContent = "cannot reach the daemon: " + e.message;
  }
}

function draw(o) {
  document.getElementById("version").textContent = "version " + o.version;
  banner("store-failure", o.store_failure ? "store: " + o.store_failure : "");
  banner("job-errors", o.job_errors.length ? "job file errors:\n" + o.job_errors.join("\n") : "");
  drawJobs(o.jobs);
  drawTimeline(o);
  drawTables(o.tables);
  drawQuality(o.tables);
  if (shownRun !== null) showRun(shownRun);
}

function banner(id, text) {
  const box = document.getElementById(id);
  box.hidden = !text;
  box.textContent = text;
}

function drawJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...jobs.map((j) => {
    const schedule = j.schedule
      ? [el("span", { class: "mono" }, j.schedule), " ", el("span", { class: "muted" }, j.timezone)]
      : j.after.length ? "after " + j.after.join(", ") : "manual";
    const states = [];
    if (j.running) states.push(badge("running"), j.progress ? j.progress[0] + "/" + j.progress[1] : "");
    if (j.paused) states.push(badge("paused"));
    if (j.suspended) states.push(badge("suspended"));
    const last = j.last_run
      ? [badge(j.last_run.status), when(j.last_run.started_at), ", ", seconds(j.last_run.seconds)]
      : el("span", { class: "muted" }, "no runs yet");
    return el("tr", { "data-job": j.name },
      el("td", {}, el("strong", {}, j.name), j.description ? el("div", { class: "muted" }, j.description) : null),
      el("td", {}, schedule),
      el("td", { class: "mono" }, j.next.map((t) => el("div", {}, t))),
      el("td", {}, states),
      el("td", {}, last));
  }));
}

// One row per job, the last 24 hours across; a bar per run, at least 3 px wide.
function drawTimeline(o) {
  const box = document.getElementById("timeline");
  const end = new Date(o.now).getTime();
  const start = end - 24 * 3600 * 1000;
  // room on the right for the last hour label and a bar that starts now
  const [left, right, width, row] = [140, 30, 900, 24];
  const jobs = o.jobs.map((j) => j.name);
  const height = row * jobs.length + 24;
  const x = (t) => left + ((Math.min(t, end) - start) / (end - start)) * (width - left - right);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img" });
  for (let h = 0; h <= 24; h += 3) {
    const t = start + h * 3600 * 1000;
    chart.append(svg("line", { x1: x(t), x2: x(t), y1: 0, y2: height - 20, stroke: "#eceff3" }));
    chart.append(svg("text", { x: x(t), y: height - 6, "text-anchor": "middle" },
      new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })));
  }
  jobs.forEach((name, i) => chart.append(svg("text", { x: 0, y: i * row + 16 }, name)));
  for (const r of o.runs) {
    const i = jobs.indexOf(r.job);
    if (i < 0) continue;
    const t0 = new Date(r.started_at).getTime();
    const bar = svg("rect", {
      class: "bar", x: x(t0), y: i * row + 4, height: row - 8,
      width: Math.max(3, x(t0 + r.seconds * 1000) - x(t0)),
      fill: STATUS_COLOURS[r.status] || "#56606f", "data-run": r.job + "/" + r.run_id, "data-status": r.status,
    }, svg("title", {}, `${r.job} run ${r.run_id}: ${r.status}, ${seconds(r.seconds)} (${r.trigger})`));
    bar.addEventListener("click", () => showRun(r.job + "/" + r.run_id));
    chart.append(bar);
  }
  box.replaceChildren(chart, el("div", { class: "muted" },
    `${o.runs.length} run(s); click a bar for its details`));
}

function showRun(key) {
  const r = overview && overview.runs.find((r) => r.job + "/" + r.run_id === key);
  const box = document.getElementById("run-details");
  shownRun = r ? key : null;
  box.hidden = !r;
  if (!r) return;
  const w = r.worker, d = r.stages;
  const rows = [
    ["run", `${r.job} run ${r.run_id}`], ["status", badge(r.status)], ["trigger", r.trigger],
    ["started", when(r.started_at)], ["duration", seconds(r.seconds)],
    ["table", r.version ? `${r.table} version ${r.version}` : r.table],
    ["rows, users", `${r.rows}, ${r.users}`], ["provider", r.provider],
    ["worker stages", w && `read ${seconds(w.read_seconds)}, model load ${seconds(w.model_load_seconds)}, plugin ${seconds(w.plugin_seconds)}, score ${seconds(w.score_seconds)}, emit ${seconds(w.emit_seconds)}`],
    ["daemon stages", d && `collect ${seconds(d.collect_seconds)}, store ${seconds(d.store_seconds)}, publish ${seconds(d.publish_seconds)}`],
    ["plugin", r.plugin && `${r.plugin.name || r.plugin.path} ${r.plugin.version || ""} (sha256 ${short(r.plugin.sha256)})`],
    ["model", r.model_sha256 && "sha256 " + short(r.model_sha256)],
    ["models read", r.models && r.models.join(", ")],
    ["warnings", r.warnings && r.warnings.join("; ")],
    ["error", r.error],
  ].filter(([, v]) => v);
  box.replaceChildren(el("dl", {}, rows.map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)])));
}

function drawTables(tables) {
  const box = document.getElementById("tables");
  if (tables.error) return box.replaceChildren(el("div", { class: "banner error" }, tables.error));
  if (!tables.length) return box.replaceChildren(el("div", { class: "muted" }, "no table published yet"));
  box.replaceChildren(...tables.map((t) => el("div", { class: "table", "data-table": t.name },
    el("h3", {}, t.name, " ", el("span", { class: "muted" },
      `serving version ${t.serving ?? "none"}, ${t.kind}` + (t.fallback.length ? `, falls back to ${t.fallback.join(", ")}` : ""))),
    el("table", {},
      el("thead", {}, el("tr", {}, ["version", "published", "by", "users", "rows", "checksum", "lineage", "gate"].map((h) => el("th", {}, h)))),
      el("tbody", {}, [...t.versions].reverse().map((v) => versionRow(t, v)))))));
}

function versionRow(t, v) {
  const lin = v.lineage || {};
  const lineage = [
    lin.plugin && `plugin ${lin.plugin.name || lin.plugin.path} ${lin.plugin.version || ""}`,
    lin.model_sha256 && "model " + short(lin.model_sha256),
    lin.inputs && lin.inputs.length && `${lin.inputs.length} input(s)`,
    lin.recd_version && "recd " + lin.recd_version,
  ].filter(Boolean).join(", ");
  const gate = v.gate
    ? [v.held ? badge("gated") : null, v.gate.failed && v.gate.failed.length ? v.gate.failed.join("; ") : "passed"]
    : "";
  return el("tr", { class: v.version === t.serving ? "serving" : null, "data-version": v.version },
    el("td", {}, String(v.version), v.version === t.serving ? [" ", el("span", { class: "badge s-ok" }, "serving")] : null),
    el("td", {}, when(v.published_at)),
    el("td", {}, `${v.job} run ${v.run_id}`),
    el("td", {}, v.users.toLocaleString()),
    el("td", {}, v.rows.toLocaleString()),
    el("td", { class: "mono" }, v.checksum_hex),
    el("td", {}, lineage),
    el("td", {}, gate));
}

// A small line chart per table and measure the gates recorded, oldest version first.
function drawQuality(tables) {
  const box = document.getElementById("quality");
  const charts = [];
  for (const t of Array.isArray(tables) ? tables : []) {
    const holdout = t.versions.filter((v) => v.gate && v.gate.holdout);
    if (holdout.length) {
      charts.push(lineChart(`${t.name}: ${holdout[0].gate.holdout.metric} on the holdout`,
        holdout.map((v) => [v.version, v.gate.holdout.value])));
    }
    const changed = t.versions.filter((v) => v.gate && typeof v.gate.changed_share === "number");
    if (changed.length) {
      charts.push(lineChart(`${t.name}: share of lists changed`, changed.map((v) => [v.version, v.gate.changed_share])));
    }
    charts.push(...evalCharts(t));
  }
  box.replaceChildren(...(charts.length ? [el("div", { class: "charts" }, charts)]
    : [el("div", { class: "muted" }, "No quality recorded yet: a job's [gate] records its holdout metric and the share of changed lists with each version, and `recd eval --record` the evaluation of the version it read.")]));
}

// Measures charted from `recd eval --record`, where the latest record has them.
const EVAL_MEASURES = ["ndcg@k", "recall@k", "coverage", "roc_auc", "log_loss"];

// The recorded evaluations of a table, one chart per measure, over the versions whose
// record has the latest record's setting (other settings do not compare); each point's
// tooltip gives its cut-off.
function evalCharts(t) {
  const recorded = t.versions.filter((v) => v.eval);
  if (!recorded.length) return [];
  const newer = (a, b) => (b.eval.recorded_at > a.eval.recorded_at
    || (b.eval.recorded_at === a.eval.recorded_at && b.version > a.version) ? b : a);
  const latest = recorded.reduce(newer);
  const same = recorded.filter((v) => v.eval.setting === latest.eval.setting);
  const about = `${latest.eval.setting}; latest: version ${latest.version}, cut-off ${latest.eval.cutoff}, `
    + `${latest.eval.users.toLocaleString()} users, recorded ${when(latest.eval.recorded_at)}`;
  return EVAL_MEASURES.filter((m) => m in latest.eval.metrics).map((m) => {
    const points = same.filter((v) => typeof v.eval.metrics[m] === "number")
      .map((v) => [v.version, v.eval.metrics[m], `cut-off ${v.eval.cutoff}`]);
    const chart = lineChart(`${t.name}: ${m} (recd eval)`, points);
    chart.dataset.eval = `${t.name} ${m}`;
    chart.append(el("div", { class: "muted" }, about));
    return chart;
  });
}

// `points`: [version, value, optional note for the tooltip], oldest first.
function lineChart(title, points) {
  const [w, h, pad] = [280, 120, 28];
  const ys = points.map((p) => p[1]);
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const span = hi - lo || Math.abs(hi) || 1;
  const x = (i) => pad + (points.length === 1 ? (w - 2 * pad) / 2 : (i * (w - 2 * pad)) / (points.length - 1));
  const y = (v) => h - pad - ((v - lo) / span) * (h - 2 * pad);
  const chart = svg("svg", { viewBox: `0 0 ${w} ${h}`, width: w, height: h, role: "img" });
  chart.append(svg("polyline", {
    points: points.map((p, i) => `${x(i)},${y(p[1])}`).join(" "), fill: "none", stroke: "#2e6fd0", "stroke-width": 2,
  }));
  points.forEach((p, i) => {
    const note = p[2] ? `, ${p[2]}` : "";
    chart.append(svg("circle", { cx: x(i), cy: y(p[1]), r: 3, fill: "#2e6fd0" }, svg("title", {}, `version ${p[0]}: ${p[1].toFixed(4)}${note}`)));
    chart.append(svg("text", { x: x(i), y: h - 8, "text-anchor": "middle" }, "v" + p[0]));
  });
  chart.append(svg("text", { x: 2, y: 12 }, hi.toFixed(3)));
  chart.append(svg("text", { x: 2, y: h - pad + 4 }, lo.toFixed(3)));
  return el("div", { class: "chart" }, el("h3", {}, title), chart);
}

async function lookup(user) {
  const box = document.getElementById("lookup");
  if (!user) return box.replaceChildren();
  box.replaceChildren(el("div", { class: "muted" }, "looking up " + user + "…"));
  const found = await getJson("/api/user?id=" + encodeURIComponent(user));
  const lists = found.tables.map((t) => {
    const how = t.entries === null ? "nothing (no list and no fallback)"
      : t.fallback ? `from ${t.source}, version ${t.version}` : `version ${t.version}`;
    let body;
    if (t.entries === null) body = null;
    else if (Array.isArray(t.entries)) {
      body = el("table", {}, el("tbody", {}, t.entries.map((e, i) => el("tr", { "data-item": e.item },
        el("td", { class: "muted" }, String(i + 1)), el("td", { class: "mono" }, e.item),
        el("td", {}, e.title || ""), el("td", { class: "muted" }, e.score.toFixed(4))))));
    } else {
      body = el("table", {}, el("tbody", {}, Object.entries(t.entries).map(([k, v]) =>
        el("tr", {}, el("td", { class: "mono" }, k), el("td", {}, v)))));
    }
    return el("div", { class: "list", "data-table": t.table }, el("h3", {}, t.table, " ", el("span", { class: "muted" }, how)), body);
  });
  const errors = found.title_errors.map((e) => el("div", { class: "banner warn" }, e));
  box.replaceChildren(...errors, el("div", { class: "lists", "data-user": found.user }, lists));
}

document.getElementById("lookup-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const user = document.getElementById("lookup-user").value.trim();
  history.replaceState(null, "", user ? "?user=" + encodeURIComponent(user) : "/");
  lookup(user).catch((err) => pageError(String(err)));
});

const initialUser = new URLSearchParams(location.search).get("user");
if (initialUser) {
  document.getElementById("lookup-user").value = initialUser;
  lookup(initialUser).catch((err) => pageError(String(err)));
}
refresh();
setInterval(refresh, POLL_MS);
