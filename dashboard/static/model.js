// Conveyor dashboard, the model panel: one model's throughput, latency, queue wait against run
// time and batch sizes over time (kept here from the snapshots /events pushes: the server keeps
// no history), its streams, the settings its workers loaded it with, and its recent errors
// (api/models/M, read every 2 s while the panel is open). Opened by a click on a model's row
// or by the address #model=NAME. dashboard.js calls ModelPanel.record/render on each snapshot.
"use strict";

const ModelPanel = (() => {
  const POINTS = 240; // two minutes at 2 snapshots a second
  const REFRESH_MS = 2000; // the model's document: streams, settings, errors
  // each model's series: times, then one array per figure below
  const FIGURES = ["calls_per_s", "errors_per_s", "p50_s", "p99_s", "wait_p50_s", "wait_p99_s",
    "run_p50_s", "run_p99_s", "batch_mean", "batch_p99"];
  const SECONDS = new Set(FIGURES.filter((f) => f.endsWith("_s") && !f.endsWith("_per_s"))); // drawn in ms
  const series = new Map();
  let shown = null;
  let charts = [];
  let loadedAt = 0;
  let batching = false;

  const $ = (selector) => document.querySelector(selector);
  const text = (value) => (value === null || value === undefined ? "-" : String(value));

  function td(row, value, numeric) {
    const c = row.insertCell();
    c.textContent = text(value);
    if (numeric) c.className = "n";
    return c;
  }

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "-";
    if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + "s ago";
    if (seconds < 3600) return Math.floor(seconds / 60) + "m ago";
    return Math.floor(seconds / 3600) + "h" + Math.floor((seconds % 3600) / 60) + "m ago";
  }

  // every model's history, from each snapshot (so a panel opened later shows the past too)
  function record(fleet) {
    if (fleet.stale) return;
    const names = new Set(fleet.models.map((m) => m.name));
    for (const name of series.keys()) if (!names.has(name)) series.delete(name);
    for (const m of fleet.models) {
      let data = series.get(m.name);
      if (!data) {
        data = [[], ...FIGURES.map(() => [])];
        series.set(m.name, data);
      }
      const values = { ...m, errors_per_s: m.errors_last_minute === null ? null : m.errors_last_minute / 60 };
      data[0].push(fleet.time);
      FIGURES.forEach((figure, i) => {
        const v = values[figure];
        data[i + 1].push(v === null || v === undefined ? null : SECONDS.has(figure) ? v * 1000 : v);
      });
      if (data[0].length > POINTS) data.forEach((s) => s.shift());
    }
  }

  function chart(title, lines, columns, box) {
    const data = series.get(shown) || [[], ...FIGURES.map(() => [])];
    const u = new uPlot({
      title,
      width: 340,
      height: 170,
      series: [{}, ...lines.map(([label, stroke, dash]) => ({ label, stroke, dash, spanGaps: true }))],
      axes: [{}, { size: 50, values: (u, ticks) => ticks.map((v) => +v.toPrecision(3)) }],
      scales: { y: { range: (u, min, max) => [0, Math.max(max, title.startsWith("batch") ? 1 : 0.001)] } },
      legend: { live: true },
    }, [data[0], ...columns.map((c) => data[c])], box);
    u.columns = columns;
    return u;
  }

  function makeCharts() {
    charts.forEach((c) => c.destroy());
    charts = [];
    const box = $("#model-charts");
    box.replaceChildren();
    if (!window.uPlot) return;
    const one = (id) => {
      const div = document.createElement("div");
      div.className = "chart";
      div.dataset.chart = id;
      box.append(div);
      return div;
    };
    const col = (figure) => FIGURES.indexOf(figure) + 1;
    charts.push(chart("throughput (/s, 1 min window)", [["calls", "#2a9d3a"], ["errors", "#c0392b"]],
      [col("calls_per_s"), col("errors_per_s")], one("throughput")));
    charts.push(chart("latency (ms, 1 min window)", [["p50", "#1f6fd1"], ["p99", "#e07b00"]],
      [col("p50_s"), col("p99_s")], one("latency")));
    charts.push(chart("queue wait vs run time (ms)", [
      ["wait p50", "#8e44ad"], ["wait p99", "#8e44ad", [4, 3]],
      ["run p50", "#16a085"], ["run p99", "#16a085", [4, 3]],
    ], [col("wait_p50_s"), col("wait_p99_s"), col("run_p50_s"), col("run_p99_s")], one("wait-run")));
    if (batching) {
      charts.push(chart("batch size (requests)", [["mean", "#d35400"], ["p99", "#7f8c8d", [4, 3]]],
        [col("batch_mean"), col("batch_p99")], one("batches")));
    }
  }

  function drawCharts() {
    const data = series.get(shown);
    if (!data) return;
    for (const u of charts) u.setData([data[0], ...u.columns.map((c) => data[c])]);
  }

  // a loaded instance's settings as rows: nested objects flattened to dotted keys
  function settingRows(values, prefix, rows) {
    for (const [key, value] of Object.entries(values)) {
      const name = prefix + key;
      if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
        settingRows(value, name + ".", rows);
      } else {
        rows.push([name, Array.isArray(value) ? value.join(", ") || "-" : typeof value === "object" && value ? "{}" : value]);
      }
    }
    return rows;
  }

  function renderSettings(loaded) {
    const body = $("#model-settings tbody");
    body.replaceChildren();
    $("#model-settings-none").hidden = loaded.length > 0;
    $("#model-settings").hidden = loaded.length === 0;
    for (const instance of loaded) {
      const head = body.insertRow();
      head.className = "group";
      const c = head.insertCell();
      c.colSpan = 2;
      c.textContent = "version " + (instance.version || "(none)") + " on " + instance.workers.join(", ");
      for (const [key, value] of settingRows(instance.values, "", [])) {
        const row = body.insertRow();
        row.dataset.key = key;
        td(row, key);
        td(row, value);
      }
    }
  }

  function renderErrors(errors) {
    const body = $("#model-errors tbody");
    body.replaceChildren();
    $("#model-errors-none").hidden = errors.length > 0;
    $("#model-errors").hidden = errors.length === 0;
    for (const e of errors) {
      const row = body.insertRow();
      row.dataset.request = e.request_id;
      td(row, age(e.age_s), true);
      td(row, e.worker);
      td(row, e.request_id);
      td(row, e.kind);
      td(row, e.type);
      td(row, e.message).className = "message";
    }
  }

  function renderStreams(streams) {
    const body = $("#streams tbody");
    body.replaceChildren();
    for (const s of streams) {
      const row = body.insertRow();
      row.dataset.stream = s.key;
      const group = s.group || {};
      td(row, s.key);
      td(row, s.version || "(main)");
      td(row, s.backlog, true);
      td(row, group.lag, true);
      td(row, group.pending, true);
      td(row, group.oldest_pending_age_s === null || group.oldest_pending_age_s === undefined ? null : group.oldest_pending_age_s.toFixed(1) + "s", true);
      td(row, (group.consumers || []).map((c) => c.name + " (" + c.pending + ", " + (c.idle_ms / 1000).toFixed(1) + "s)").join("; "));
    }
  }

  async function load() {
    loadedAt = Date.now();
    const name = shown;
    let response;
    let doc;
    try {
      response = await fetch("api/models/" + encodeURIComponent(name));
      doc = await response.json();
    } catch (error) { // the dashboard itself is away: the event stream says so too
      if (name === shown) $("#model-name").textContent = name + ": " + error;
      return;
    }
    if (name !== shown) return; // another model was opened meanwhile
    $("#model-name").textContent = name + (response.ok ? "" : ": " + doc.error);
    if (!response.ok) return;
    const nowBatching = doc.batch_mean !== null || doc.settings.some((s) => s.values.max_batch_size > 1);
    if (nowBatching !== batching || !charts.length) {
      batching = nowBatching;
      makeCharts();
    }
    $("#model-summary").textContent = [
      doc.workers + " worker(s)", doc.queued + " queued", doc.running + " running",
      doc.dead_letters + " dead letters",
      doc.errors_last_minute === null ? null : doc.errors_last_minute + " errors in the last minute",
    ].filter(Boolean).join(" · ");
    renderStreams(doc.streams);
    renderSettings(doc.settings);
    renderErrors(doc.recent_errors);
    drawCharts();
  }

  function show(name) {
    shown = name;
    const section = $("#model");
    if (!name) {
      section.hidden = true;
      charts.forEach((c) => c.destroy());
      charts = [];
      if (location.hash.startsWith("#model=")) history.replaceState(null, "", location.pathname + location.search);
      return;
    }
    section.hidden = false;
    $("#model-name").textContent = name;
    history.replaceState(null, "", "#model=" + encodeURIComponent(name));
    charts.forEach((c) => c.destroy());
    charts = [];
    load();
  }

  // each pushed snapshot: the charts move; the document is read again every REFRESH_MS
  function render(fleet) {
    record(fleet);
    if (!shown) return;
    drawCharts();
    if (Date.now() - loadedAt > REFRESH_MS) load();
  }

  function fromAddress() {
    const hash = location.hash;
    if (hash.startsWith("#model=")) show(decodeURIComponent(hash.slice(7)));
  }

  $("#model-close").addEventListener("click", () => show(null));
  window.addEventListener("hashchange", fromAddress);
  fromAddress();
  return { record, render, show };
})();
