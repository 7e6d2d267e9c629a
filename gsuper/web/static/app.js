// gsuper dashboard: polls /status.json and /events.json every 2 s and draws everything itself
// (DOM built with textContent, charts as small SVG paths); no library, no asset from outside.
"use strict";

const POLL_MS = 2000;
const HISTORY_S = 300; // the charts show at most the last five minutes
const MIN_SPAN_S = 60; // and at least one, so a fresh page fills its charts at once
let firstPoint = null;
const EVENTS_SHOWN = 40;
const SVG = "http://www.w3.org/2000/svg";

const history = new Map(); // program -> [{t, rps, rss}]
const lastTotals = { t: 0, requests: new Map() };
const lastWorker = new Map(); // "program#index" -> {pid, requests, t}
const workerRate = new Map(); // "program#index" -> requests/s

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function duration(s) {
  if (!s) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), sec = s % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + sec + "s";
  return sec + "s";
}

function rate(x) {
  if (x === null || x === undefined) return "–";
  return x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2);
}

function count(n) { return Number(n || 0).toLocaleString("en-US"); }

function clock(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString("en-GB", { hour12: false });
}

function pill(state) { return el("span", "pill s-" + state, state); }

// A small line-and-area chart of one series over the last HISTORY_S seconds.
function chart(title, points, key, format, kind, now) {
  const box = el("div", "chart");
  const head = el("div", "chart-head");
  const last = points.length ? points[points.length - 1][key] : null;
  head.append(el("span", "", title), el("span", "now", last === null ? "–" : format(last)));
  box.append(head);
  const w = 300, h = 70, top = 6, bottom = 4;
  const svg = svgEl("svg", { viewBox: `0 0 ${w} ${h}`, preserveAspectRatio: "none", role: "img", "aria-label": title });
  const values = points.map(p => p[key]).filter(v => v !== null && v !== undefined);
  const max = Math.max(1e-9, ...values) * 1.15;
  for (const f of [0.25, 0.5, 0.75]) {
    const y = top + (h - top - bottom) * f;
    svg.append(svgEl("line", { x1: 0, x2: w, y1: y, y2: y, class: "grid" }));
  }
  const span = chartSpan(now);
  const xs = p => w * (1 - (now - p.t) / span);
  const ys = v => top + (h - top - bottom) * (1 - v / max);
  const pts = points.filter(p => p[key] !== null && p[key] !== undefined);
  if (pts.length > 1) {
    const line = pts.map((p, i) => (i ? "L" : "M") + xs(p).toFixed(1) + " " + ys(p[key]).toFixed(1)).join(" ");
    const area = line + ` L${xs(pts[pts.length - 1]).toFixed(1)} ${h} L${xs(pts[0]).toFixed(1)} ${h} Z`;
    svg.append(svgEl("path", { d: area, class: kind + "-area" }), svgEl("path", { d: line, class: kind + "-line" }));
  }
  box.append(svg);
  const foot = el("div", "chart-foot");
  foot.append(el("span", "", "−" + duration(span).replace(/ 0s$/, "")), el("span", "", values.length ? "peak " + format(Math.max(...values)) : "no data yet"),
    el("span", "", "now"));
  box.append(foot);
  return box;
}

function chartSpan(now) {
  const seen = firstPoint === null ? 0 : now - firstPoint;
  return Math.min(HISTORY_S, Math.max(MIN_SPAN_S, Math.ceil(seen / 60) * 60));
}

function exitText(ex) {
  if (!ex || !ex.reason) return "–";
  return ex.code === null || ex.code === undefined ? ex.reason : `${ex.reason} (${ex.code})`;
}

function renderProgram(name, rows, now, totals) {
  const card = el("article", "program");
  card.dataset.program = name;
  const head = el("div", "program-head");
  const up = rows.filter(r => r.state === "RUNNING").length;
  head.append(el("h2", "", name), el("span", "meta", `${up}/${rows.length} running`));
  const bad = rows.filter(r => r.state === "FATAL" || r.state === "BACKOFF");
  if (bad.length) head.append(pill(bad.some(r => r.state === "FATAL") ? "FATAL" : "BACKOFF"));
  const pts = history.get(name) || [];
  const cur = pts.length ? pts[pts.length - 1] : { rps: null, rss: null };
  const figures = el("div", "figures");
  const fig = (v, k) => { const d = el("div"); d.append(el("b", "", v), el("span", "", " " + k)); return d; };
  figures.append(fig(rate(cur.rps), "req/s"), fig(bytes(cur.rss), "memory"),
    fig(count((totals[name] || { requests: 0 }).requests), "requests"));
  head.append(figures);
  card.append(head);
  const charts = el("div", "charts");
  charts.append(chart("Requests per second", pts, "rps", rate, "rps", now), chart("Memory (RSS)", pts, "rss", bytes, "mem", now));
  card.append(charts);

  const table = el("table");
  const thead = el("thead");
  const hr = el("tr");
  for (const [label, num] of [["#", 0], ["State", 0], ["PID", 0], ["Uptime", 1], ["Requests", 1], ["Req/s", 1],
    ["RSS", 1], ["Restarts", 1], ["Last exit", 0], ["Error", 0]]) {
    hr.append(el("th", num ? "num" : "", label));
  }
  thead.append(hr);
  const tbody = el("tbody");
  for (const r of rows) {
    const tr = el("tr", "worker");
    tr.dataset.state = r.state;
    const key = r.program + "#" + r.index;
    const state = el("td");
    state.append(pill(r.state));
    tr.append(el("td", "idx", r.index), state, el("td", "pid", r.pid ?? "–"), el("td", "num", duration(r.uptime_s)),
      el("td", "num", count(r.requests)), el("td", "num", r.pid ? rate(workerRate.get(key) ?? null) : "–"),
      el("td", "num", bytes(r.rss_bytes)), el("td", "num", r.restarts), el("td", "exit", exitText(r.last_exit)),
      el("td", "err", r.last_error || ""));
    tbody.append(tr);
  }
  table.append(thead, tbody);
  card.append(table);
  return card;
}

function describeEvent(e) {
  const who = e.program ? (e.worker === null || e.worker === undefined ? e.program : `${e.program}#${e.worker}`) : "master";
  switch (e.event) {
    case "started": return { k: "started", text: "started", who, detail: e.pid ? "pid " + e.pid : "" };
    case "exit": {
      const recycle = ["max_request", "memory_limit", "max_lifetime", "request_timeout"].includes(e.reason);
      return { k: recycle ? "recycle" : e.reason, text: "exited: " + e.reason, who,
        detail: `code ${e.code}` + (e.uptime_s !== undefined ? ` after ${duration(e.uptime_s) === "–" ? "0s" : duration(e.uptime_s)}` : "") };
    }
    case "state":
      if (!["RUNNING", "BACKOFF", "FATAL"].includes(e.state)) return null;
      return { k: e.state.toLowerCase(), text: e.state.toLowerCase(), who, detail: "from " + e.from };
    case "scaled": return { k: "scaled", text: `scaled ${e.before} → ${e.after}`, who, detail: "" };
    case "reloaded": return { k: "reloaded", text: "configuration reloaded", who, detail: (e.changes || []).length + " changes" };
    default: return null;
  }
}

function renderEvents(events) {
  const list = document.getElementById("events");
  const items = [];
  for (const e of events.slice().reverse()) {
    const d = describeEvent(e);
    if (!d) continue;
    const li = el("li", "k-" + d.k);
    const what = el("div", "what");
    what.append(el("b", "", d.who), document.createTextNode(" " + d.text));
    li.append(el("time", "", clock(e.time)), what);
    if (d.detail) li.append(el("div", "detail", d.detail));
    items.push(li);
    if (items.length >= EVENTS_SHOWN) break;
  }
  if (!items.length) items.push(el("li", "empty", "No events yet."));
  list.replaceChildren(...items);
}

function stat(value, key) {
  const d = el("div", "stat");
  d.append(el("span", "v", value), el("span", "k", key));
  return d;
}

function update(status, feed) {
  const now = feed.time;
  const rows = status.workers;
  const programs = new Map();
  for (const r of rows) {
    if (!programs.has(r.program)) programs.set(r.program, []);
    programs.get(r.program).push(r);
  }
  // Per worker requests/s, from the change of its request count within one life (one pid).
  for (const r of rows) {
    const key = r.program + "#" + r.index, prev = lastWorker.get(key);
    if (prev && prev.pid === r.pid && r.requests >= prev.requests && now > prev.t) {
      workerRate.set(key, (r.requests - prev.requests) / (now - prev.t));
    } else workerRate.delete(key); // a new life (or none): no rate until its second poll
    lastWorker.set(key, { pid: r.pid, requests: r.requests, t: now });
  }
  // Per program requests/s, from the master's request counters (they survive recycles).
  const dt = now - lastTotals.t;
  for (const [name, list] of programs) {
    const total = (feed.totals[name] || { requests: 0 }).requests;
    const prev = lastTotals.requests.get(name);
    const rps = prev !== undefined && dt > 0 ? Math.max(0, total - prev) / dt : null;
    lastTotals.requests.set(name, total);
    const rss = list.reduce((a, r) => a + (r.rss_bytes || 0), 0);
    const pts = history.get(name) || [];
    pts.push({ t: now, rps, rss: list.some(r => r.rss_bytes) ? rss : null });
    while (pts.length && pts[0].t < now - HISTORY_S) pts.shift();
    history.set(name, pts);
  }
  lastTotals.t = now;
  if (firstPoint === null) firstPoint = now;

  const m = status.master;
  document.getElementById("config").textContent = `${m.config} · master ${m.pid} · v${m.version} · up ${duration(m.uptime_s)}`;
  document.title = `gsuper · ${rows.filter(r => r.state === "RUNNING").length}/${rows.length} running`;
  let rpsAll = 0, rssAll = 0, anyRps = false;
  for (const pts of history.values()) {
    const last = pts[pts.length - 1];
    if (last && last.rps !== null) { rpsAll += last.rps; anyRps = true; }
    if (last && last.rss) rssAll += last.rss;
  }
  const fatal = rows.filter(r => r.state === "FATAL").length;
  const summary = document.getElementById("summary");
  summary.replaceChildren(stat(`${rows.filter(r => r.state === "RUNNING").length}/${rows.length}`, "running"),
    stat(anyRps ? rate(rpsAll) : "–", "req/s"), stat(bytes(rssAll), "memory"), stat(String(fatal), "fatal"));

  const section = document.getElementById("programs");
  const cards = [...programs.entries()].map(([name, list]) => renderProgram(name, list, now, feed.totals));
  if (!cards.length) cards.push(el("div", "program empty", "No programs."));
  section.replaceChildren(...cards);
  renderEvents(feed.events);
}

function setLive(ok, text) {
  const live = document.getElementById("live");
  live.className = "live " + (ok ? "ok" : "down");
  document.getElementById("live-text").textContent = text;
}

async function getJSON(path) {
  const res = await fetch(path, { cache: "no-store", credentials: "same-origin" });
  if (!res.ok) throw new Error(path + ": HTTP " + res.status);
  return res.json();
}

async function poll() {
  try {
    const [status, feed] = await Promise.all([getJSON("/status.json"), getJSON("/events.json")]);
    update(status, feed);
    setLive(true, "live");
  } catch (err) {
    setLive(false, "disconnected");
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
