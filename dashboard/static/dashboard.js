// Conveyor dashboard: renders the fleet snapshots that /events pushes (at most 2 a second),
// keeps each model's backlog history here in the page (the server keeps none), and sends
// dead-letter and model (load, unload) actions with the token kept in sessionStorage. Plain
// DOM, no build step.
"use strict";

const HISTORY = 240; // points per chart: two minutes at 2 snapshots a second
const history = new Map(); // "<model>/<chart>" -> [[times], [series 1], [series 2], [series 3]]
const charts = new Map(); // "<model>/<chart>" -> uPlot (SMALL_CHARTS)
let deadModel = null;
let deadCount = -1;
let deadLoadedAt = 0;
const DEAD_REFRESH_MS = 5000; // a count that stays the same may hide new entries: reload anyway

const $ = (selector) => document.querySelector(selector);

function cell(row, text, numeric) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "-" : String(text);
  if (numeric) td.className = "n";
  return td;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 10) return seconds.toFixed(1) + "s";
  if (seconds < 60) return Math.floor(seconds) + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(Math.floor(seconds % 60)).padStart(2, "0") + "s";
  return Math.floor(seconds / 3600) + "h" + String(Math.floor((seconds % 3600) / 60)).padStart(2, "0") + "m";
}

function ms(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  return seconds < 1 ? (seconds * 1000).toFixed(1) + "ms" : seconds.toFixed(2) + "s";
}

function renderModels(fleet) {
  const body = $("#models tbody");
  body.replaceChildren();
  for (const m of fleet.models) {
    const row = body.insertRow();
    row.dataset.model = m.name;
    row.title = "open its panel";
    row.addEventListener("click", () => ModelPanel.show(m.name)); // model.js
    cell(row, m.name);
    cell(row, m.versions.join(", ") || "-");
    cell(row, m.queued, true);
    cell(row, m.running, true);
    cell(row, ago(m.oldest_running_age_s), true);
    cell(row, m.calls_per_s === null ? null : m.calls_per_s.toFixed(1), true);
    cell(row, ms(m.p50_s), true);
    cell(row, ms(m.p99_s), true);
    cell(row, m.errors_last_minute, true);
    cell(row, m.workers, true);
    cell(row, m.dead_letters, true);
    modelActionCell(row, m.name);
  }
}

function renderWorkers(fleet) {
  const body = $("#workers tbody");
  body.replaceChildren();
  for (const w of fleet.workers) {
    const row = body.insertRow();
    row.dataset.worker = w.id;
    if (w.late) {
      row.className = "late";
      row.title = "late heartbeat: this worker may be stuck or gone";
    }
    cell(row, w.id);
    cell(row, w.host);
    cell(row, w.pid, true);
    cell(row, w.ready.join(", "));
    cell(row, w.in_flight, true);
    cell(row, w.done, true);
    cell(row, ago(w.heartbeat_age_s) + " ago", true);
    cell(row, ago(w.started_ago_s) + " ago", true);
  }
  const gone = fleet.gone.map((g) => g.id);
  $("#gone").textContent = gone.length ? "gone without unregistering: " + gone.join(", ") : "";
}

// Each model's two small charts: its backlog with calls/s, and its latency with errors.
const SMALL_CHARTS = [
  {
    key: "backlog",
    title: ": queued, running, calls/s",
    values: (m) => [m.queued, m.running, m.calls_per_s],
    series: [
      { label: "queued", stroke: "#1f6fd1" },
      { label: "running", stroke: "#e07b00" },
      { label: "calls/s", stroke: "#2a9d3a", scale: "right" },
    ],
  },
  {
    key: "latency",
    title: ": p50, p99 (ms), errors (1 min)",
    values: (m) => [
      m.p50_s === null ? null : m.p50_s * 1000,
      m.p99_s === null ? null : m.p99_s * 1000,
      m.errors_last_minute,
    ],
    series: [
      { label: "p50 ms", stroke: "#1f6fd1" },
      { label: "p99 ms", stroke: "#e07b00" },
      { label: "errors", stroke: "#c0392b", scale: "right" },
    ],
  },
];

function smallChart(m, spec, data) {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.chart = m.name + "/" + spec.key;
  $("#charts").append(box);
  return new uPlot({
    title: m.name + spec.title,
    width: 300,
    height: 130,
    legend: { show: false },
    series: [{}, ...spec.series],
    axes: [{}, { size: 40 }, { scale: "right", side: 1, size: 40, grid: { show: false } }],
    scales: {
      y: { range: (u, min, max) => [0, Math.max(max, 1)] },
      right: { range: (u, min, max) => [0, Math.max(max, 1)] },
    },
  }, data, box);
}

function renderCharts(fleet) {
  if (fleet.stale || !window.uPlot) return;
  const names = new Set(fleet.models.map((m) => m.name));
  for (const [key, chart] of charts) {
    if (!names.has(key.slice(0, key.lastIndexOf("/")))) {
      chart.root.parentElement.remove();
      chart.destroy();
      charts.delete(key);
      history.delete(key);
    }
  }
  for (const m of fleet.models) {
    for (const spec of SMALL_CHARTS) {
      const key = m.name + "/" + spec.key;
      let data = history.get(key);
      if (!data) {
        data = [[], [], [], []];
        history.set(key, data);
      }
      data[0].push(fleet.time);
      spec.values(m).forEach((value, i) => data[i + 1].push(value));
      if (data[0].length > HISTORY) data.forEach((series) => series.shift());
      const chart = charts.get(key);
      if (chart) chart.setData(data);
      else charts.set(key, smallChart(m, spec, data));
    }
  }
}

function renderDeadModels(fleet) {
  const select = $("#dead-model");
  const names = fleet.models.filter((m) => m.dead_letters > 0).map((m) => m.name);
  if (deadModel && !names.includes(deadModel)) names.push(deadModel);
  const shown = [...select.options].map((o) => o.value);
  if (shown.join("\n") !== names.join("\n")) {
    select.replaceChildren(...names.map((n) => new Option(n, n)));
    if (deadModel) select.value = deadModel;
  }
  if (!deadModel && names.length) deadModel = names[0];
  const model = fleet.models.find((m) => m.name === deadModel);
  const count = model ? model.dead_letters : 0;
  if (count !== deadCount || Date.now() - deadLoadedAt > DEAD_REFRESH_MS) {
    deadCount = count;
    loadDead();
  }
}

async function loadDead() {
  deadLoadedAt = Date.now();
  const body = $("#dead tbody");
  if (!deadModel) {
    body.replaceChildren();
    $("#dead-status").textContent = "no dead letters";
    return;
  }
  const response = await fetch("api/models/" + encodeURIComponent(deadModel) + "/dead?count=100");
  const doc = await response.json();
  body.replaceChildren();
  if (!response.ok) {
    $("#dead-status").textContent = doc.error;
    return;
  }
  deadCount = doc.total; // what the list shows: a snapshot with another count reloads it
  $("#dead-status").textContent = doc.total + " in all" + (doc.total > doc.entries.length ? ", oldest " + doc.entries.length + " shown" : "");
  for (const d of doc.entries) {
    const row = body.insertRow();
    row.dataset.entry = d.entry_id;
    cell(row, d.entry_id);
    cell(row, d.request_id);
    cell(row, d.method);
    cell(row, d.deliveries, true);
    cell(row, ago(d.age_s), true);
    cell(row, d.reason);
    const actions = row.insertCell();
    for (const [label, verb] of [["Retry", "retry"], ["Delete", "delete"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.dataset.action = verb;
      button.addEventListener("click", () => act(verb, { ids: [d.entry_id] }, label.toLowerCase() + " dead letter " + d.entry_id));
      actions.append(button);
    }
  }
}

function token() {
  let value = sessionStorage.getItem("conveyor-token");
  if (!value) {
    value = prompt("The dashboard's token (--token / CONVEYOR_DASHBOARD_TOKEN):");
    if (value) sessionStorage.setItem("conveyor-token", value);
  }
  return value;
}

async function act(verb, body, what) {
  if (!deadModel || !confirm(what + " of model " + deadModel + "?")) return;
  const secret = token();
  if (!secret) return;
  const response = await fetch("api/models/" + encodeURIComponent(deadModel) + "/dead/" + verb, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: "Bearer " + secret },
    body: JSON.stringify(body),
  });
  const doc = await response.json();
  if (response.status === 401) sessionStorage.removeItem("conveyor-token"); // ask again next time
  await loadDead();
  $("#dead-status").textContent = response.ok ? verb + ": " + doc.done + " done" : doc.error;
}

// Load and unload of a model (POST api/models/<model>/load or /unload): a confirmation, the
// token, then what the fleet answered (each worker that has the model acts on it).
function modelActionCell(row, name) {
  const td = row.insertCell();
  for (const [label, verb] of [["Load", "load"], ["Unload", "unload"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.dataset.action = verb;
    button.addEventListener("click", (event) => {
      event.stopPropagation(); // not a click on the row (that shows the model's streams)
      controlModel(verb, name);
    });
    td.append(button);
  }
}

async function controlModel(verb, name) {
  if (!confirm(verb + " model " + name + " on every worker that has it?")) return;
  const secret = token();
  if (!secret) return;
  const status = $("#model-action-status");
  status.className = "muted";
  status.textContent = verb + " of " + name + ": sent, waiting for the workers…";
  let response;
  let doc;
  try {
    response = await fetch("api/models/" + encodeURIComponent(name) + "/" + verb, {
      method: "POST",
      headers: { authorization: "Bearer " + secret },
    });
    doc = await response.json();
  } catch (error) {
    status.className = "failed";
    status.textContent = verb + " of " + name + ": " + error;
    return;
  }
  if (response.status === 401) sessionStorage.removeItem("conveyor-token"); // ask again next time
  status.className = response.ok && doc.ok ? "done" : "failed";
  status.textContent = response.ok ? doc.message : verb + " of " + name + ": " + doc.error;
}

function render(fleet) {
  $("#prefix").textContent = "prefix " + fleet.prefix;
  const error = $("#error");
  error.hidden = !fleet.error;
  error.textContent = fleet.error ? "Redis: " + fleet.error + (fleet.stale ? " (figures below are the last read)" : "") : "";
  renderModels(fleet);
  renderWorkers(fleet);
  renderCharts(fleet);
  renderDeadModels(fleet);
  ModelPanel.render(fleet); // model.js: its history, and the open model's panel
}

function connect() {
  const status = $("#status");
  const source = new EventSource("events");
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status"; };
  source.onmessage = (event) => render(JSON.parse(event.data));
}

$("#dead-model").addEventListener("change", (event) => { deadModel = event.target.value; deadCount = -1; loadDead(); });
$("#retry-all").addEventListener("click", () => act("retry", { all: true }, "Retry every dead letter"));
$("#delete-all").addEventListener("click", () => act("delete", { all: true }, "Delete every dead letter"));
connect();
