/* Shared helpers for the dashboard and the portal page: DOM building, API calls, time zones, charts.
   Everything shown comes from the JSON API; text is always inserted as text, never as HTML. */
"use strict";

const TB = (() => {
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(credential, method, path, body) {
    const headers = { Authorization: `Bearer ${credential}`, Accept: "application/json" };
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function query(params) {
    const search = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      if (value === null || value === undefined || value === "") continue;
      for (const item of Array.isArray(value) ? value : [value]) search.append(name, item);
    }
    const text = search.toString();
    return text ? `?${text}` : "";
  }

  // -- time zones: windows must start on local boundaries of the chosen zone -----------------------
  function wallClock(zone, date) {
    const parts = new Intl.DateTimeFormat("en-US", {
      timeZone: zone, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    }).formatToParts(date);
    const out = {};
    for (const p of parts) if (p.type !== "literal") out[p.type] = Number(p.value);
    return out;
  }

  function offsetMs(zone, date) {
    const w = wallClock(zone, date);
    const asUtc = Date.UTC(w.year, w.month - 1, w.day, w.hour, w.minute, w.second);
    return asUtc - Math.floor(date.getTime() / 1000) * 1000;
  }

  function zonedInstant(zone, year, month, day, hour = 0, minute = 0) {
    const guess = Date.UTC(year, month - 1, day, hour, minute);
    let instant = guess - offsetMs(zone, new Date(guess));
    const second = offsetMs(zone, new Date(instant));
    if (guess - second !== instant) instant = guess - second;
    return new Date(instant);
  }

  /** The start of the window (MINUTE, HOUR, DAY, MONTH) that holds `date`, in `zone`. */
  function windowStart(size, zone, date) {
    const w = wallClock(zone, date);
    if (size === "MINUTE") return zonedInstant(zone, w.year, w.month, w.day, w.hour, w.minute);
    if (size === "HOUR") return zonedInstant(zone, w.year, w.month, w.day, w.hour);
    if (size === "DAY") return zonedInstant(zone, w.year, w.month, w.day);
    return zonedInstant(zone, w.year, w.month, 1);
  }

  /** The end (exclusive) of the window holding `date`: the start of the next one. */
  function windowEnd(size, zone, date) {
    const start = windowStart(size, zone, date);
    if (size === "MINUTE") return new Date(start.getTime() + 60000);
    if (size === "HOUR") return windowStart(size, zone, new Date(start.getTime() + 3600000));
    const w = wallClock(zone, start);
    if (size === "DAY") return zonedInstant(zone, w.year, w.month, w.day + 1);
    return zonedInstant(zone, w.year, w.month + 1, 1);
  }

  function validZone(zone) {
    try {
      new Intl.DateTimeFormat("en-US", { timeZone: zone });
      return true;
    } catch (_) {
      return false;
    }
  }

  function formatTime(iso, zone, size) {
    const options = { timeZone: zone || undefined };
    // DATE: the calendar date as YYYY-MM-DD (the printable invoice writes periods the same way).
    if (size === "DATE") return new Intl.DateTimeFormat("en-CA", { ...options, year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date(iso));
    if (size === "MONTH") Object.assign(options, { year: "numeric", month: "short" });
    else if (size === "DAY") Object.assign(options, { month: "short", day: "numeric" });
    else if (size === "CLOCK") Object.assign(options, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    else Object.assign(options, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    return new Intl.DateTimeFormat(undefined, options).format(new Date(iso));
  }

  function formatNumber(value) {
    const n = Number(value);
    if (!Number.isFinite(n)) return String(value);
    return n.toLocaleString(undefined, { maximumFractionDigits: 4 });
  }

  /** A decimal string ("12345.50") with the locale's digit grouping, digit for digit: no float on the way. */
  function formatDecimal(value) {
    const text = String(value);
    const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
    if (!match) return text;
    const parts = new Intl.NumberFormat().formatToParts(1000.5);
    const group = (parts.find((p) => p.type === "group") || { value: "," }).value;
    const decimal = (parts.find((p) => p.type === "decimal") || { value: "." }).value;
    const integer = match[2].replace(/\B(?=(\d{3})+(?!\d))/g, group);
    return `${match[1]}${integer}${match[3] ? decimal + match[3] : ""}`;
  }

  /** Money from the API (a decimal string in the currency's minor units) with the currency's symbol,
      its digits exactly as sent. */
  function formatMoney(amount, currency) {
    let parts;
    try {
      parts = new Intl.NumberFormat(undefined, { style: "currency", currency }).formatToParts(-1);
    } catch (_) {
      return `${formatDecimal(amount)} ${currency}`;
    }
    const text = String(amount);
    const negative = text.startsWith("-");
    const digits = formatDecimal(negative ? text.slice(1) : text);
    let out = "";
    let placed = false;
    for (const part of parts) {
      if (part.type === "minusSign") out += negative ? part.value : "";
      else if (["integer", "group", "decimal", "fraction"].includes(part.type)) {
        if (!placed) out += digits;
        placed = true;
      } else out += part.value;
    }
    return out.trim();
  }

  // -- charts (Chart.js, vendored) ----------------------------------------------------------------
  const PALETTE = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#ea580c", "#475569"];

  /** Turn meter query rows into one dataset per series; `seriesOf(row)` names a row's series. */
  function stackedSeries(rows, seriesOf) {
    const starts = [...new Set(rows.map((r) => r.windowStart))].sort();
    const index = new Map(starts.map((s, i) => [s, i]));
    const series = new Map();
    for (const row of rows) {
      const name = seriesOf(row);
      if (!series.has(name)) series.set(name, new Array(starts.length).fill(0));
      series.get(name)[index.get(row.windowStart)] += Number(row.value);
    }
    const names = [...series.keys()].sort();
    return { starts, datasets: names.map((name, i) => ({ label: name, data: series.get(name), backgroundColor: PALETTE[i % PALETTE.length], borderColor: PALETTE[i % PALETTE.length] })) };
  }

  function barChart(canvas, labels, datasets, stacked) {
    if (canvas._chart) canvas._chart.destroy();
    canvas._chart = new Chart(canvas, {
      type: "bar",
      data: { labels, datasets },
      options: {
        responsive: true, maintainAspectRatio: false, animation: false,
        scales: { x: { stacked }, y: { stacked, beginAtZero: true } },
        plugins: { legend: { display: datasets.length > 1 || Boolean(datasets[0] && datasets[0].label) } },
      },
    });
    return canvas._chart;
  }

  function lineChart(canvas, labels, values, label) {
    if (canvas._chart) {
      canvas._chart.data.labels = labels;
      canvas._chart.data.datasets[0].data = values;
      canvas._chart.update("none");
      return canvas._chart;
    }
    canvas._chart = new Chart(canvas, {
      type: "line",
      data: { labels, datasets: [{ label, data: values, borderColor: PALETTE[0], backgroundColor: "rgba(37,99,235,.15)", fill: true, pointRadius: 0, tension: 0.2 }] },
      options: { responsive: true, maintainAspectRatio: false, animation: false, scales: { y: { beginAtZero: true } }, plugins: { legend: { display: false } } },
    });
    return canvas._chart;
  }

  return { el, api, query, ApiError, wallClock, windowStart, windowEnd, validZone, formatTime, formatNumber, formatDecimal, formatMoney, stackedSeries, barChart, lineChart };
})();
