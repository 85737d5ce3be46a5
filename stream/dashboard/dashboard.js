// anomstream dashboard: subscribes to /subscribe and draws with uPlot (vendored, v1.6.32, MIT).
"use strict";
(function () {
  const MAX_POINTS = 3000;        // points kept on the chart
  const MAX_PER_FRAME = 64;       // score points drawn per frame (anomalies always drawn)
  const MAX_ROWS = 50;            // anomaly table rows
  const MAX_EVENTS = 100;         // control events listed
  const token = new URLSearchParams(location.search).get("token");
  const q = token ? "token=" + encodeURIComponent(token) : "";
  const $ = (id) => document.getElementById(id);

  let threshold = null;
  let lastX = 0, points = 0, scored = 0, anomalies = 0, windowCount = 0, dirty = false;
  const xs = [], ys = [], th = [], an = [];

  const chartEl = $("chart");
  const plot = new uPlot({
    width: Math.max(300, chartEl.clientWidth || 800), height: 320,
    scales: { x: { time: true }, y: { range: [0, 1] } },
    series: [
      {},
      // Points, not a line: a batch shares one scored_at, and a line would draw it as a spike.
      { label: "score", stroke: "#4ea1ff", width: 0, paths: () => null,
        points: { show: true, size: 3, fill: "#4ea1ff", stroke: "#4ea1ff" } },
      { label: "threshold", stroke: "#ffb454", width: 1.5, dash: [6, 4], points: { show: false } },
      { label: "anomaly", stroke: "#ff5c5c", width: 0, paths: () => null,
        points: { show: true, size: 7, fill: "#ff5c5c", stroke: "#ff5c5c" } },
    ],
    axes: [
      { stroke: "#7b8794", grid: { stroke: "#243040" }, ticks: { stroke: "#243040" } },
      { stroke: "#7b8794", grid: { stroke: "#243040" }, ticks: { stroke: "#243040" } },
    ],
  }, [xs, ys, th, an], chartEl);
  new ResizeObserver(() => plot.setSize({ width: Math.max(300, chartEl.clientWidth), height: 320 })).observe(chartEl);

  function addPoint(rec) {
    const x = Math.max(lastX, typeof rec.scored_at === "number" ? rec.scored_at : Date.now() / 1000);
    lastX = x;
    xs.push(x); ys.push(rec.score); th.push(threshold); an.push(rec.anomaly ? rec.score : null);
    points += 1;
  }

  function onScores(records) {
    scored += records.length; windowCount += records.length;
    const stride = Math.max(1, Math.ceil(records.length / MAX_PER_FRAME));
    records.forEach((rec, i) => { if (i % stride === 0 || rec.anomaly) addPoint(rec); });
    if (records.length) $("model").textContent = records[records.length - 1].model;
    const extra = xs.length - MAX_POINTS;
    if (extra > 0) { xs.splice(0, extra); ys.splice(0, extra); th.splice(0, extra); an.splice(0, extra); }
    dirty = true;
  }

  function fmtTime(t) {
    const d = new Date((typeof t === "number" ? t : Date.parse(t) / 1000) * 1000);
    return isNaN(d) ? String(t) : d.toLocaleTimeString();
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td;
  }

  function onAnomalies(records) {
    const body = $("anomaly-rows");
    for (const rec of records) {
      anomalies += 1;
      const tr = document.createElement("tr");
      cell(tr, fmtTime(rec.scored_at));
      cell(tr, rec.id == null ? "" : String(rec.id));
      cell(tr, rec.key == null ? "" : String(rec.key));
      cell(tr, rec.score.toFixed(4));
      const sev = document.createElement("span");
      sev.className = "sev sev-" + rec.severity; sev.textContent = rec.severity;
      cell(tr, "").appendChild(sev);
      const contrib = rec.contributions || {};
      cell(tr, Object.entries(contrib).map(([k, v]) => k + " " + (100 * v).toFixed(0) + "%").join(", "), "contrib");
      body.insertBefore(tr, body.firstChild);
    }
    while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
    $("anomaly-count").textContent = String(anomalies);
  }

  function onControl(records) {
    const list = $("events");
    const empty = list.querySelector(".empty"); if (empty) empty.remove();
    for (const ev of records) {
      const li = document.createElement("li");
      const type = document.createElement("span");
      type.className = "type"; type.textContent = ev.type || "event";
      li.appendChild(type);
      const rest = Object.assign({}, ev); delete rest.type; delete rest.at;
      li.appendChild(document.createTextNode(fmtTime(ev.at) + " " + JSON.stringify(rest)));
      list.insertBefore(li, list.firstChild);
      if (ev.model && (ev.type === "model_promoted")) $("model").textContent = ev.model;
    }
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/subscribe?streams=scores,anomalies,control" + (q ? "&" + q : ""));
    const status = $("status");
    ws.onopen = () => { status.textContent = "live"; status.className = "up"; };
    ws.onclose = () => { status.textContent = "reconnecting…"; status.className = "down"; setTimeout(connect, 1000); };
    ws.onmessage = (msg) => {
      const frame = JSON.parse(msg.data);
      if (frame.stream === "scores") onScores(frame.records);
      else if (frame.stream === "anomalies") onAnomalies(frame.records);
      else if (frame.stream === "control") onControl(frame.records);
    };
  }

  async function poll() {
    try {
      const h = await (await fetch("/healthz", { cache: "no-store" })).json();
      if (h.model) $("model").textContent = h.model;
      if (typeof h.threshold === "number" && h.threshold !== threshold) {
        threshold = h.threshold; $("threshold").textContent = threshold.toFixed(3);
        th.fill(threshold); dirty = true;
      }
    } catch (e) { /* the feed status shows the outage */ }
  }

  setInterval(() => {
    if (!dirty) return;
    dirty = false;
    plot.setData([xs, ys, th, an]);
    chartEl.dataset.points = String(points);
    $("scored").textContent = String(scored);
  }, 250);
  setInterval(() => { $("rate").textContent = String(windowCount); windowCount = 0; }, 1000);
  setInterval(poll, 2000);
  poll();
  connect();
})();
