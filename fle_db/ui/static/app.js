// fle-db ui: the reward chart, live updates (polling) and lazily loaded game-state keys.
// No framework, no build; values are inserted as text (textContent) or built as SVG nodes.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(x) {
  if (x === null || x === undefined) return "–";
  return Math.abs(x) >= 1e5 ? x.toExponential(2) : String(Math.round(x * 1000) / 1000);
}

// Reward per step as bars, cumulative reward as a line; each step links to its page.
function drawChart(box) {
  const data = JSON.parse(box.dataset.rewards || "[]");
  if (!data.length) return;
  box.replaceChildren();
  const W = Math.max(box.clientWidth, 300), H = 220, L = 60, R = 60, T = 12, B = 26;
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "reward chart" }, box);
  // Two scales: cumulative reward on the left axis, reward per step (bars) on the right one.
  const range = (values) => {
    let lo = Math.min(0, ...values), hi = Math.max(0, ...values);
    return hi === lo ? [lo, lo + 1] : [lo, hi];
  };
  const [clo, chi] = range(data.map(([, , c]) => c));
  const [rlo, rhi] = range(data.map(([, r]) => r ?? 0));
  const x = (i) => L + (data.length === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (data.length - 1));
  const y = (v) => T + ((chi - v) * (H - T - B)) / (chi - clo);
  const yr = (v) => T + ((rhi - v) * (H - T - B)) / (rhi - rlo);
  el("line", { x1: L, x2: W - R, y1: y(0), y2: y(0), class: "axis" }, svg);
  el("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }, svg);
  el("line", { x1: W - R, x2: W - R, y1: T, y2: H - B, class: "axis" }, svg);
  for (const v of [chi, clo]) {
    const t = el("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end", class: "cumulative" }, svg);
    t.textContent = fmt(v);
  }
  for (const v of [rhi, rlo]) {
    const t = el("text", { x: W - R + 6, y: yr(v) + 4, class: "per-step" }, svg);
    t.textContent = fmt(v);
  }
  const bw = Math.max(1, Math.min(14, ((W - L - R) / data.length) * 0.7));
  let path = "";
  data.forEach(([n, r, c], i) => {
    const link = el("a", { href: box.dataset.base + n }, svg);
    const title = el("title", {}, link);
    title.textContent = `step ${n}: reward ${fmt(r)}, cumulative ${fmt(c)}`;
    const top = yr(Math.max(r ?? 0, 0)), bottom = yr(Math.min(r ?? 0, 0));
    el("rect", { x: x(i) - bw / 2, y: top, width: bw, height: Math.max(bottom - top, 0.5),
                 class: "bar " + ((r ?? 0) < 0 ? "neg" : "pos") }, link);
    el("circle", { cx: x(i), cy: y(c), r: 3.5, class: "dot" }, link);
    path += `${i ? "L" : "M"}${x(i).toFixed(1)},${y(c).toFixed(1)}`;
  });
  el("path", { d: path, class: "line" }, svg);
  const first = el("text", { x: L, y: H - 8 }, svg);
  first.textContent = `step ${data[0][0]}`;
  const last = el("text", { x: W - R, y: H - 8, "text-anchor": "end" }, svg);
  last.textContent = `step ${data[data.length - 1][0]}`;
}

function drawCharts(root) {
  root.querySelectorAll(".chart[data-rewards]").forEach(drawChart);
}

// Poll each [data-live] element's fragment URL and swap its content when it changed.
function live() {
  const period = Number(document.body.dataset.pollMs || 3000);
  document.querySelectorAll("[data-live]").forEach((box) => {
    let last = null, busy = false;
    setInterval(async () => {
      if (document.hidden || busy) return;
      busy = true;
      try {
        const response = await fetch(box.dataset.live, { headers: { "x-requested-with": "fle-db-ui" } });
        if (response.ok) {
          const html = await response.text();
          if (html !== last) {  // the first answer may already be newer than the page
            box.innerHTML = html;  // server-rendered and escaped by the same templates
            drawCharts(box);
          }
          last = html;
        }
      } catch (e) { /* the server restarted or the network blinked: try again next tick */ }
      busy = false;
    }, period);
  });
}

// Game-state keys are fetched when opened (states can be megabytes).
function lazyState() {
  document.querySelectorAll("details.state[data-src]").forEach((d) => {
    d.addEventListener("toggle", async () => {
      if (!d.open || d.dataset.loaded) return;
      d.dataset.loaded = "1";
      const pre = d.querySelector("pre");
      try {
        const response = await fetch(d.dataset.src);
        const body = await response.json();
        if (!response.ok) throw new Error(body.error ? body.error.detail : response.statusText);
        let text = JSON.stringify(body.decoded ?? body.value, null, 2);
        if (body.decoded !== null && body.decoded !== undefined) text = "// decoded from base64 + zlib\n" + text;
        const cap = 2 * 1024 * 1024;
        pre.textContent = text.length > cap ? text.slice(0, cap) + "\n… (cut at 2 MiB; the API has it all)" : text;
      } catch (e) {
        pre.textContent = "could not load: " + e.message;
        delete d.dataset.loaded;
      }
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  drawCharts(document);
  live();
  lazyState();
  let width = window.innerWidth;
  window.addEventListener("resize", () => {
    if (Math.abs(window.innerWidth - width) > 40) { width = window.innerWidth; drawCharts(document); }
  });
});
