"""The stylesheet and the chart script inlined into every report (hand-written, no library).

The script reads the figure specs from ``<script type="application/json" id="spikefm-data">``
(written by :mod:`spikefm.report.page`) and draws each ``<div class="fig" data-fig=ID>``:

- ``xy``: lines and points on linear or log axes (x ticks at the spec's ``x_ticks`` when given);
  hover shows the nearest point, drag selects an x-range to zoom, double-click resets;
- ``bars``: grouped bars with optional error bars, per-category points, per-bar colours (with the
  spec's ``legend``) and reference lines (their names right of the plot, clear of the bars); the
  value axis holds 0 unless the spec says ``zero: false``. Every category is named: names wrap
  onto up to six lines (a longer one keeps its start and its last words, unless that would look
  like another), and when upright bars would leave a name under 72 px the bars lie across, one
  row per category named on its left under the categories' name (``x_label``), the figure
  growing in height; hover shows the value;
- ``hist``: a histogram from precomputed edges and counts, with marked values;
- ``raster``: a units x bins matrix of uint8 levels (base64) drawn on a canvas, counts in grey or
  rates in a colour map with a colour bar under it (0 to the spec's ``vmax``); hover shows unit,
  time and value, drag zooms in time, double-click resets. Figures with the same ``link`` zoom
  together.

Tables (:meth:`spikefm.report.page.Section.table`) sit in a ``div.table-wrap`` no wider than their
section: the caption wraps above the table, and a table wider than the section scrolls sideways
in its own ``div.table-scroll``, so the page itself never does.

Figures take the width of their box when drawn (at least 240 px, so a phone's width fits) and are
drawn again when the window's width changes (a zoom is reset). A drawn figure gets
``data-drawn="1"`` and ``data-width`` (the width it was drawn for); a figure that fails shows the error in place and logs
it with ``console.error`` (the browser tests fail on any console error).
"""
from __future__ import annotations

STYLE = r"""
:root { --fg: #1d232a; --muted: #5b6570; --line: #d8dde3; --bg: #ffffff; --accent: #1f5f99; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: #f4f6f8; margin: 0; }
header.top { background: #1d2b3a; color: #fff; padding: 14px 24px; }
header.top h1 { margin: 0; font-size: 20px; font-weight: 600; }
header.top .sub { color: #c4cfdb; font-size: 12px; margin-top: 2px; }
nav.toc { padding: 6px 24px; background: #e7ecf1; border-bottom: 1px solid var(--line);
          position: sticky; top: 0; z-index: 5; }
nav.toc a { margin-right: 16px; color: var(--accent); text-decoration: none; font-weight: 500; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 20px 40px; }
section.report-section { background: var(--bg); border: 1px solid var(--line); border-radius: 6px;
                         padding: 6px 20px 16px; margin: 16px 0; }
section.report-section > h2 { font-size: 18px; margin: 10px 0 8px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
h4 { font-size: 13px; margin: 12px 0 4px; color: var(--muted); }
p.note { color: var(--muted); margin: 4px 0 8px; }
p.warn { color: #8a4b00; background: #fff4e0; padding: 4px 8px; border-radius: 4px; }
.table-wrap { display: inline-block; vertical-align: top; max-width: 100%; margin: 6px 28px 10px 0; }
.table-scroll { overflow-x: auto; }
.table-caption { color: var(--muted); padding-bottom: 3px; font-size: 12px; overflow-wrap: anywhere; }
.table-wrap p.note { font-size: 12px; margin: 3px 0 0; }
table.data { border-collapse: collapse; font-size: 13px; }
table.data th, table.data td { padding: 3px 10px; border-bottom: 1px solid #eceff2; white-space: nowrap; }
table.data th { text-align: left; background: #f3f5f7; font-weight: 600; }
table.data td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.data tr:hover td { background: #f7fafc; }
table.kv th { background: none; color: var(--muted); font-weight: 500; }
table.kv td, table.kv td.num { white-space: normal; overflow-wrap: anywhere; text-align: left; }
.figs { display: flex; flex-wrap: wrap; gap: 12px 20px; }
figure { margin: 6px 0; flex: 0 1 calc(50% - 10px); min-width: min(320px, 100%); max-width: 100%; }
figure.wide { flex-basis: 100%; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 2px; }
figcaption b { color: var(--fg); }
.fig { position: relative; width: 100%; min-height: 60px; user-select: none; }
.fig svg, .fig canvas { display: block; }
.fig .err { color: #b00020; font-size: 12px; }
.colorbar { display: flex; flex-wrap: wrap; align-items: center; gap: 2px 6px; font-size: 11px;
            color: var(--muted); margin: 2px 0 0 64px; }
.colorbar canvas { border: 1px solid #9aa5b1; }
.legend { font-size: 12px; color: var(--muted); margin: 2px 0 0 56px; }
.legend span { margin-right: 12px; white-space: nowrap; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px;
            vertical-align: -1px; }
.axis text { font-size: 11px; fill: var(--muted); }
.axis line, .axis path { stroke: #9aa5b1; }
.grid line { stroke: #edf0f3; }
.tip { position: absolute; display: none; pointer-events: none; background: rgba(29,35,42,.92);
       color: #fff; font-size: 12px; padding: 4px 7px; border-radius: 4px; white-space: pre;
       z-index: 20; }
details { margin: 6px 0; }
details summary { cursor: pointer; color: var(--accent); }
pre { background: #f6f8fa; border: 1px solid #eceff2; padding: 8px; overflow: auto; max-height: 420px;
      font-size: 12px; }
.hint { font-size: 11px; color: var(--muted); }
footer { color: var(--muted); font-size: 12px; text-align: center; padding: 12px; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("spikefm-data").textContent);
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#7f7f7f", "#bcbd22", "#17becf"];
  var M = { l: 64, r: 14, t: 10, b: 40 }, MARGINS = M;
  var CHAR_PX = 6.5;  // the width of one character of the 11 px axis text, about
  var LINKS = {};
  var tip = document.createElement("div");
  tip.className = "tip";
  document.body.appendChild(tip);

  function showTip(text, ev) {
    tip.textContent = text;
    tip.style.display = "block";
    tip.style.left = (ev.pageX + 14) + "px";
    tip.style.top = (ev.pageY + 12) + "px";
  }
  function hideTip() { tip.style.display = "none"; }

  function num(v) {  // JSON carries non-finite numbers as strings
    if (typeof v === "number") return v;
    if (v === "inf") return Infinity;
    if (v === "-inf") return -Infinity;
    return NaN;
  }
  function fin(v) { return typeof v === "number" && isFinite(v); }
  function fmt(v) {
    v = num(v);
    if (isNaN(v)) return "nan";
    if (!isFinite(v)) return v > 0 ? "inf" : "-inf";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3).replace(/\.?0+e/, "e");
    return String(Number(v.toPrecision(5)));
  }
  function el(tag, attrs, parent) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function linear(d0, d1, r0, r1) {
    var k = (r1 - r0) / ((d1 - d0) || 1);
    var f = function (v) { return r0 + (v - d0) * k; };
    f.inv = function (p) { return d0 + (p - r0) / k; };
    return f;
  }
  function logScale(d0, d1, r0, r1) {
    var s = linear(Math.log10(d0), Math.log10(d1), r0, r1);
    var f = function (v) { return s(Math.log10(v)); };
    f.inv = function (p) { return Math.pow(10, s.inv(p)); };
    return f;
  }
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    var step = Math.pow(10, Math.floor(Math.log10((hi - lo) / n)));
    var err = (hi - lo) / n / step;
    if (err >= 7.5) step *= 10; else if (err >= 3.5) step *= 5; else if (err >= 1.5) step *= 2;
    var out = [];
    for (var t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
      out.push(Math.abs(t) < step * 1e-9 ? 0 : Number(t.toPrecision(12)));
    }
    return out;
  }
  function logTicks(lo, hi) {
    var out = [];
    for (var e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
      var t = Math.pow(10, e);
      if (t >= lo * 0.999 && t <= hi * 1.001) out.push(t);
    }
    return out.length >= 2 ? out : niceTicks(lo, hi, 4);
  }
  function domain(values, log) {
    var lo = Infinity, hi = -Infinity;
    values.forEach(function (v) {
      if (fin(v) && (!log || v > 0)) { if (v < lo) lo = v; if (v > hi) hi = v; }
    });
    if (lo === Infinity) return log ? [0.1, 10] : [0, 1];
    if (lo === hi) return log ? [lo / 2, hi * 2] : [lo - (Math.abs(lo) || 1) * 0.5, hi + (Math.abs(hi) || 1) * 0.5];
    if (log) return [lo / Math.pow(hi / lo, 0.04), hi * Math.pow(hi / lo, 0.04)];
    var pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }
  function size(fig, spec) {
    var w = Math.max(240, Math.min(fig.clientWidth || 640, 1140));  // a phone's width fits
    return { W: w, H: spec.height || 260 };
  }
  function axes(g, x, y, xt, yt, W, H, spec, m) {  // m: the chart's margins (default M)
    var M = m || MARGINS, grid = el("g", { "class": "grid" }, g);
    yt.forEach(function (t) { el("line", { x1: M.l, x2: W - M.r, y1: y(t), y2: y(t) }, grid); });
    var ax = el("g", { "class": "axis" }, g);
    el("line", { x1: M.l, x2: W - M.r, y1: H - M.b, y2: H - M.b }, ax);
    el("line", { x1: M.l, x2: M.l, y1: M.t, y2: H - M.b }, ax);
    xt.forEach(function (t) {
      var px = x(t);
      el("line", { x1: px, x2: px, y1: H - M.b, y2: H - M.b + 4 }, ax);
      el("text", { x: px, y: H - M.b + 16, "text-anchor": "middle" }, ax).textContent = fmt(t);
    });
    yt.forEach(function (t) {
      el("line", { x1: M.l - 4, x2: M.l, y1: y(t), y2: y(t) }, ax);
      el("text", { x: M.l - 6, y: y(t) + 4, "text-anchor": "end" }, ax).textContent = fmt(t);
    });
    if (spec.x_label) el("text", { x: (M.l + W - M.r) / 2, y: H - 6, "text-anchor": "middle" }, ax).textContent = spec.x_label;
    yLabelLines(spec, H - M.t - M.b).forEach(function (line, k) {  // a long one wraps (see yRoom)
      var lx = 12 + k * 13, cy = (M.t + H - M.b) / 2;
      el("text", { x: lx, y: cy, "text-anchor": "middle", "class": "y-label", transform: "rotate(-90 " + lx + " " + cy + ")" },
         ax).textContent = line;
    });
  }
  // The y axis's name in lines no longer than the plot is high, broken at spaces only (at most
  // three lines; a longer word stays whole).
  function yLabelLines(spec, plotH) {
    if (!spec.y_label) return [];
    var chars = Math.max(8, Math.floor(plotH / CHAR_PX)), lines = [], line = "";
    String(spec.y_label).split(/\s+/).forEach(function (word) {
      if (line && (line + " " + word).length > chars) { lines.push(line); line = word; }
      else line = line ? line + " " + word : word;
    });
    if (line) lines.push(line);
    return lines.length > 3 ? lines.slice(0, 2).concat([lines.slice(2).join(" ")]) : lines;
  }
  // Margins `m` with room on the left for each further line of the y axis's name.
  function yRoom(m, spec, H) {
    var extra = Math.max(0, yLabelLines(spec, H - m.t - m.b).length - 1) * 13;
    return { l: m.l + extra, r: m.r, t: m.t, b: m.b };
  }
  function legend(fig, items, always) {  // always: even of one item (a legend of colours)
    if (items.length < (always ? 1 : 2)) return;
    var d = document.createElement("div");
    d.className = "legend";
    items.forEach(function (it) {
      var s = document.createElement("span");
      var i = document.createElement("i");
      if (it.style === "points") { i.style.background = it.color; i.style.borderRadius = "50%"; }
      else if (it.style === "dash" || it.style === "dot") { i.style.borderTop = "2px dashed " + it.color; i.style.height = "0"; }
      else if (it.style === "line") { i.style.background = it.color; i.style.height = "3px"; i.style.verticalAlign = "3px"; }
      else i.style.background = it.color;
      s.appendChild(i);
      s.appendChild(document.createTextNode(it.name));
      d.appendChild(s);
    });
    fig.appendChild(d);
  }
  // Margins m with room on the right for the names of the horizontal reference lines (drawn
  // there by refLines with `outside`).
  var MIN_XY_PLOT = 200;  // px: the narrowest plot area an xy chart gives up for its reference names
  function refRoom(m, spec) {
    var names = (spec.hlines || []).map(function (h) { return String(h.name || ""); });
    var room = Math.max.apply(null, names.map(function (n) { return n ? n.length * CHAR_PX + 8 : 0; }).concat([0]));
    return { l: m.l, r: m.r + room, t: m.t, b: m.b };
  }
  // Dashed reference lines; with `outside`, a horizontal line's name goes right of the plot area
  // (the caller leaves room in m.r, see refRoom), where no bar, point or line can be under it.
  function refLines(g, spec, x, y, W, H, m, outside) {
    var M = m || MARGINS;
    (spec.hlines || []).forEach(function (h) {
      var py = y(num(h.y));
      if (!fin(py) || py < M.t || py > H - M.b) return;
      el("line", { x1: M.l, x2: W - M.r, y1: py, y2: py, stroke: h.color || "#555", "stroke-dasharray": "5 4" }, g);
      var at = outside ? { x: W - M.r + 4, y: py + 4, "text-anchor": "start" } : { x: W - M.r - 2, y: py - 3, "text-anchor": "end" };
      at["font-size"] = 11;
      at.fill = h.color || "#555";
      at["class"] = "ref-label";
      el("text", at, g).textContent = h.name || "";
    });
    (spec.vlines || []).forEach(function (v) {
      var px = x(num(v.x));
      if (!fin(px) || px < M.l || px > W - M.r) return;
      el("line", { x1: px, x2: px, y1: M.t, y2: H - M.b, stroke: v.color || "#555", "stroke-dasharray": "5 4" }, g);
      el("text", { x: px + 3, y: M.t + 10, "font-size": 11, fill: v.color || "#555" }, g).textContent = v.name || "";
    });
  }
  // Drag across the plot to select a horizontal range; calls done(p0, p1) in pixels. One pair of
  // window handlers serves every chart (a chart drawn again on resize adds none).
  var dragging = null;  // the drag under way: {target, left, right, start, rect, done}
  function dragAt(ev) {
    var d = dragging, b = d.target.getBoundingClientRect();
    return Math.max(d.left, Math.min(d.right, ev.clientX - b.left));
  }
  window.addEventListener("mousemove", function (ev) {
    if (!dragging) return;
    var px = dragAt(ev);
    dragging.rect.update(Math.min(dragging.start, px), Math.abs(px - dragging.start));
  });
  window.addEventListener("mouseup", function (ev) {
    if (!dragging) return;
    var d = dragging, px = dragAt(ev);
    dragging = null;
    d.rect.remove();
    if (Math.abs(px - d.start) > 4) d.done(Math.min(d.start, px), Math.max(d.start, px));
  });
  function brush(target, overlay, left, right, done, reset) {
    target.addEventListener("mousedown", function (ev) {
      var b = target.getBoundingClientRect(), px = ev.clientX - b.left;
      if (px < left || px > right) return;
      dragging = { target: target, left: left, right: right, start: px, rect: overlay(px), done: done };
      ev.preventDefault();
    });
    target.addEventListener("dblclick", function () { reset(); });
  }
  function linked(spec, redraw) {
    if (!spec.link) return function (z) { redraw(z); };
    (LINKS[spec.link] = LINKS[spec.link] || []).push(redraw);
    return function (z) { LINKS[spec.link].forEach(function (f) { f(z); }); };
  }

  // The x ticks of an xy chart: the spec's `x_ticks` (the values plotted, e.g. whole numbers of
  // sessions: no tick at 1.2 sessions) inside the view, each clear of the one before, else nice ones.
  function xTicks(spec, xd, x) {
    if (spec.x_ticks) {
      var last = -Infinity, out = spec.x_ticks.map(num).filter(function (t) {
        var px = x(t), w = fmt(t).length * CHAR_PX + 8;
        if (!(t >= xd[0] && t <= xd[1]) || px - last < w) return false;
        last = px;
        return true;
      });
      if (out.length) return out;
    }
    return spec.log_x ? logTicks(xd[0], xd[1]) : niceTicks(xd[0], xd[1], 6);
  }
  function drawXY(fig, spec) {
    var sz = size(fig, spec), W = sz.W, H = sz.H, cur = null;
    // reference names right of the plot, where no point or line is under them; inside it (above
    // their line, at the right) only where that room would leave the plot too narrow (a phone)
    var room = refRoom(MARGINS, spec), outside = W - room.l - room.r >= MIN_XY_PLOT;
    var M = yRoom(outside ? room : MARGINS, spec, H);
    var series = spec.series.map(function (s, i) {
      return { name: s.name, style: s.style || "line", color: s.color || COLORS[i % COLORS.length],
               x: s.x.map(num), y: s.y.map(num), markers: s.markers !== false };
    });
    var allX = [];
    series.forEach(function (s) { allX = allX.concat(s.x); });
    var full = domain(allX, spec.log_x);
    var holder = document.createElement("div");
    fig.appendChild(holder);
    function render(z) {
      var xd = z || full, ys = [];
      series.forEach(function (s) {
        s.x.forEach(function (v, i) { if (v >= xd[0] && v <= xd[1]) ys.push(s.y[i]); });
      });
      (spec.hlines || []).forEach(function (h) { ys.push(num(h.y)); });
      var yd = domain(ys, spec.log_y);
      var x = (spec.log_x ? logScale : linear)(xd[0], xd[1], M.l, W - M.r);
      var y = (spec.log_y ? logScale : linear)(yd[0], yd[1], H - M.b, M.t);
      var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H }, null);
      axes(svg, x, y, xTicks(spec, xd, x), spec.log_y ? logTicks(yd[0], yd[1]) : niceTicks(yd[0], yd[1], 5), W, H, spec, M);
      el("clipPath", { id: fig.id + "-clip" }, svg).appendChild(
        el("rect", { x: M.l, y: M.t, width: W - M.l - M.r, height: H - M.t - M.b }, null));
      var g = el("g", { "clip-path": "url(#" + fig.id + "-clip)" }, svg);
      var pts = [];
      series.forEach(function (s) {
        var d = "", pen = false;
        s.x.forEach(function (xv, i) {
          var yv = s.y[i];
          var ok = fin(xv) && fin(yv) && (!spec.log_x || xv > 0) && (!spec.log_y || yv > 0);
          if (!ok) { pen = false; return; }
          var px = x(xv), py = y(yv);
          if (xv >= xd[0] && xv <= xd[1]) pts.push({ px: px, py: py, s: s, x: xv, y: yv });
          d += (pen ? "L" : "M") + px.toFixed(1) + " " + py.toFixed(1);
          pen = true;
        });
        if (s.style !== "points" && d) {
          el("path", { d: d, fill: "none", stroke: s.color, "stroke-width": 1.6,
                       "stroke-dasharray": s.style === "dash" ? "6 4" : (s.style === "dot" ? "2 3" : "none") }, g);
        }
      });
      pts.forEach(function (p) {
        if (p.s.style === "points" || (p.s.style === "line" && p.s.markers && p.s.x.length <= 60)) {
          el("circle", { cx: p.px, cy: p.py, r: p.s.style === "points" ? 3.2 : 2.2, fill: p.s.color }, g);
        }
      });
      refLines(svg, spec, x, y, W, H, M, outside);
      var mark = el("circle", { r: 5, fill: "none", stroke: "#000", "stroke-width": 1.5, visibility: "hidden" }, svg);
      if (cur) holder.replaceChild(svg, cur.svg); else holder.appendChild(svg);
      cur = { svg: svg, x: x, pts: pts, mark: mark };
    }
    holder.addEventListener("mousemove", function (ev) {
      var b = holder.getBoundingClientRect(), mx = ev.clientX - b.left, my = ev.clientY - b.top;
      var best = null, bd = 900;
      cur.pts.forEach(function (p) {
        var d = (p.px - mx) * (p.px - mx) + (p.py - my) * (p.py - my);
        if (d < bd) { bd = d; best = p; }
      });
      if (!best) { cur.mark.setAttribute("visibility", "hidden"); hideTip(); return; }
      cur.mark.setAttribute("cx", best.px); cur.mark.setAttribute("cy", best.py);
      cur.mark.setAttribute("visibility", "visible");
      showTip(best.s.name + "\n" + (spec.x_label || "x") + ": " + fmt(best.x) + "\n" +
              (spec.y_label || "y") + ": " + fmt(best.y), ev);
    });
    holder.addEventListener("mouseleave", function () { cur.mark.setAttribute("visibility", "hidden"); hideTip(); });
    brush(holder, function (px) {
      var r = el("rect", { x: px, y: M.t, width: 0, height: H - M.t - M.b, fill: "rgba(31,95,153,.15)" }, cur.svg);
      return { update: function (a, w) { r.setAttribute("x", a); r.setAttribute("width", w); },
               remove: function () { if (r.parentNode) r.parentNode.removeChild(r); } };
    }, M.l, W - M.r, function (a, b) { apply([cur.x.inv(a), cur.x.inv(b)]); }, function () { apply(null); });
    var apply = linked(spec, render);
    render(null);
    legend(fig, series.map(function (s) { return { name: s.name, color: s.color, style: s.style }; }));
  }

  // A category name as lines of at most `chars` characters, broken at spaces and after - _ /
  // (a longer word is cut), so that names that differ anywhere are drawn differently.
  function wrapLabel(label, chars) {
    var re = /(\s*)([^\s\-_\/]+[\-_\/]*|[\-_\/]+)/g, lines = [], line = "", mt;
    while ((mt = re.exec(label))) {
      var sep = line && mt[1] ? " " : "", piece = mt[2];
      if (line && (line + sep + piece).length > chars) { lines.push(line); line = ""; sep = ""; }
      while (piece.length > chars) { lines.push(piece.slice(0, chars)); piece = piece.slice(chars); }
      line += sep + piece;
    }
    if (line) lines.push(line);
    return lines.length ? lines : [label];
  }
  var LABEL_LINES = 6, LINE_PX = 12;
  // Upright bars need this many pixels per category to name it (11 characters a line); below it the
  // bars lie across, one row per category named on its left, and the figure grows in height.
  var MIN_BAND = 72;
  // The drawn name of each category: wrapped to `chars` characters a line; one longer than
  // LABEL_LINES lines keeps its start and its last words, unless that would look like another.
  function barLabels(cats, chars) {
    var full = cats.map(function (c) { return wrapLabel(String(c), chars); });
    var short = full.map(function (lines, i) {
      if (lines.length <= LABEL_LINES) return lines;
      var tail = String(cats[i]).slice(1 - chars), cut = tail.search(/[\s\-_\/]/);
      if (cut >= 0 && cut < tail.length - 1) tail = tail.slice(cut + 1).replace(/^\s+/, "");
      return lines.slice(0, LABEL_LINES - 1).concat(["\u2026" + tail]);
    });
    return short.map(function (lines, i) {  // never two shortened names alike
      var text = lines.join(" ");
      return short.some(function (o, j) { return j !== i && o.join(" ") === text; }) ? full[i] : lines;
    });
  }
  // Every value the value axis must show; 0 too, unless the spec says `zero: false` (scores far
  // from 0, whose differences bars from 0 would hide: the bars then grow from the axis's start).
  function barValues(spec) {
    var vals = [];
    spec.series.forEach(function (s) {
      s.values.forEach(function (v, i) {
        vals.push(num(v));
        if (s.err) { vals.push(num(v) - num(s.err[i])); vals.push(num(v) + num(s.err[i])); }
        if (s.lo) vals.push(num(s.lo[i]));
        if (s.hi) vals.push(num(s.hi[i]));
        if (s.points && s.points[i]) s.points[i].forEach(function (p) { vals.push(num(p)); });
      });
    });
    (spec.hlines || []).forEach(function (h) { vals.push(num(h.y)); });
    if (!spec.log_y && spec.zero !== false) vals.push(0);
    return vals;
  }
  function barBase(spec, d) { return spec.log_y || spec.zero === false ? d[0] : 0; }
  function barColor(s, j, i) { return (s.colors && s.colors[i]) || s.color || COLORS[j % COLORS.length]; }
  function barLegend(fig, spec) {  // the spec's own legend (bars coloured one by one) or the series
    if (spec.legend) legend(fig, spec.legend, true);
    else legend(fig, spec.series.map(function (s, j) { return { name: s.name, color: s.color || COLORS[j % COLORS.length] }; }));
  }
  // A bar's hover text and its interval (lo, hi: null without one).
  function barInfo(spec, s, i, v) {
    var series = spec.series, cats = spec.categories;
    var text = String(cats[i]) + (series.length > 1 || s.name ? "\n" + s.name : "") + ": " + fmt(v);
    var lo = s.err ? v - num(s.err[i]) : (s.lo ? num(s.lo[i]) : null);
    var hi = s.err ? v + num(s.err[i]) : (s.hi ? num(s.hi[i]) : null);
    if (s.err) text += " \u00b1 " + fmt(s.err[i]);
    else if (s.lo && fin(lo) && fin(hi)) text += " [" + fmt(lo) + ", " + fmt(hi) + "]";
    if (s.points && s.points[i] && s.points[i].length) {
      text += "\n" + (spec.points_label || "points") + ": " + s.points[i].map(fmt).join(", ");
    }
    return { text: text, lo: lo, hi: hi };
  }
  function hover(r, text) {
    r.addEventListener("mousemove", function (ev) { showTip(text, ev); });
    r.addEventListener("mouseleave", hideTip);
  }
  function drawBars(fig, spec) {
    var sz = size(fig, spec), W = sz.W;
    var cats = spec.categories, series = spec.series;
    var m = yRoom(refRoom(M, spec), spec, sz.H);
    var band = (W - m.l - m.r) / cats.length;
    if (band < MIN_BAND) return drawBarsAcross(fig, spec, W);
    var labels = barLabels(cats, Math.max(6, Math.floor(band / CHAR_PX)));  // every category is named
    var rowsUsed = Math.max.apply(null, labels.map(function (l) { return l.length; }).concat([1]));
    m.b += (rowsUsed - 1) * LINE_PX;  // the plot keeps its height; the figure grows
    var H = sz.H + (rowsUsed - 1) * LINE_PX;
    var yd = domain(barValues(spec), spec.log_y);
    var y = (spec.log_y ? logScale : linear)(yd[0], yd[1], H - m.b, m.t);
    var base = barBase(spec, yd);
    var bw = Math.max(1, band * 0.8 / series.length);
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-layout": "upright" }, null);
    fig.appendChild(svg);
    var x = linear(0, cats.length, m.l, W - m.r);
    axes(svg, x, y, [], spec.log_y ? logTicks(yd[0], yd[1]) : niceTicks(yd[0], yd[1], 5), W, H, spec, m);
    var ax = svg.querySelector(".axis");
    cats.forEach(function (c, i) {
      var cx = m.l + band * (i + 0.5);
      var t = el("text", { x: cx, y: H - m.b + 15, "text-anchor": "middle", "class": "cat", "data-cat": i }, ax);
      labels[i].forEach(function (line, k) {
        el("tspan", { x: cx, dy: k ? LINE_PX : 0 }, t).textContent = line;
      });
      el("title", {}, t).textContent = String(c);
    });
    series.forEach(function (s, j) {
      s.values.forEach(function (v, i) {
        v = num(v);
        if (!fin(v) || (spec.log_y && v <= 0)) return;
        var x0 = m.l + band * i + band * 0.1 + bw * j;
        var y0 = y(v), yb = y(base), info = barInfo(spec, s, i, v);
        var r = el("rect", { x: x0, y: Math.min(y0, yb), width: Math.max(bw - 1, 1), "data-cat": i,
                             height: Math.max(Math.abs(yb - y0), 1), fill: barColor(s, j, i) }, svg);
        if (fin(info.lo) && fin(info.hi)) {
          var cx = x0 + bw / 2;
          el("path", { d: "M" + cx + " " + y(info.lo) + "V" + y(info.hi) + "M" + (cx - 4) + " " + y(info.lo) + "h8M" +
                       (cx - 4) + " " + y(info.hi) + "h8", stroke: "#222", fill: "none" }, svg);
        }
        if (s.points && s.points[i]) {
          s.points[i].forEach(function (p, k) {
            p = num(p);
            if (fin(p)) el("circle", { cx: x0 + bw / 2 + (k - (s.points[i].length - 1) / 2) * 3, cy: y(p), r: 2.6,
                                        fill: "#fff", stroke: "#222" }, svg);
          });
        }
        hover(r, info.text);
      });
    });
    if (!spec.log_y && yd[0] < 0 && yd[1] > 0) el("line", { x1: m.l, x2: W - m.r, y1: y(0), y2: y(0), stroke: "#666" }, svg);
    refLines(svg, spec, x, y, W, H, m, true);
    barLegend(fig, spec);
  }
  // Bars lying across, one row per category named left of it (at most 40 % of the width, wrapped
  // as upright names are): for more categories than upright bars can name; the figure grows in
  // height. Reference values (`hlines`) are vertical dashed lines, named above the plot.
  function drawBarsAcross(fig, spec, W) {
    var cats = spec.categories, series = spec.series;
    var longest = Math.max.apply(null, cats.map(function (c) { return String(c).length; }).concat([1]));
    var labels = barLabels(cats, Math.max(8, Math.min(longest, Math.floor(W * 0.4 / CHAR_PX))));
    var widest = 1, lines = 1;
    labels.forEach(function (l) {
      lines = Math.max(lines, l.length);
      l.forEach(function (s) { widest = Math.max(widest, s.length); });
    });
    var named = (spec.hlines || []).some(function (h) { return h.name; });
    // the categories' own name (x_label) heads their column, above the plot: at the foot of a
    // column as narrow as its names it was cut off on the left
    var head = spec.x_label ? LINE_PX + 6 : 0;
    var m = { l: Math.ceil(widest * CHAR_PX) + 16, r: M.r + 10, t: M.t + head + (named ? 16 : 0), b: M.b };
    var rowH = Math.max(lines * LINE_PX + 6, series.length * 8 + 6, 22);
    var H = m.t + m.b + rowH * cats.length;
    var xd = domain(barValues(spec), spec.log_y);
    var x = (spec.log_y ? logScale : linear)(xd[0], xd[1], m.l, W - m.r);
    var base = barBase(spec, xd);
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "data-layout": "across" }, null);
    fig.appendChild(svg);
    var ticks = spec.log_y ? logTicks(xd[0], xd[1]) : niceTicks(xd[0], xd[1], Math.max(2, Math.floor((W - m.l - m.r) / 90)));
    var grid = el("g", { "class": "grid" }, svg);
    ticks.forEach(function (t) { el("line", { x1: x(t), x2: x(t), y1: m.t, y2: H - m.b }, grid); });
    var ax = el("g", { "class": "axis" }, svg);
    el("line", { x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b }, ax);
    el("line", { x1: m.l, x2: m.l, y1: m.t, y2: H - m.b }, ax);
    ticks.forEach(function (t) {
      el("line", { x1: x(t), x2: x(t), y1: H - m.b, y2: H - m.b + 4 }, ax);
      el("text", { x: x(t), y: H - m.b + 16, "text-anchor": "middle" }, ax).textContent = fmt(t);
    });
    if (spec.y_label) el("text", { x: (m.l + W - m.r) / 2, y: H - 6, "text-anchor": "middle" }, ax).textContent = spec.y_label;
    if (spec.x_label) el("text", { x: 2, y: M.t + LINE_PX - 2, "text-anchor": "start", "class": "cat-name" },
                         ax).textContent = spec.x_label;
    cats.forEach(function (c, i) {
      var cy = m.t + rowH * (i + 0.5), n = labels[i].length;
      var t = el("text", { x: m.l - 8, y: cy - (n - 1) * LINE_PX / 2 + 4, "text-anchor": "end", "class": "cat",
                           "data-cat": i }, ax);
      labels[i].forEach(function (line, k) {
        el("tspan", { x: m.l - 8, dy: k ? LINE_PX : 0 }, t).textContent = line;
      });
      el("title", {}, t).textContent = String(c);
    });
    var bh = Math.max(1, rowH * 0.8 / series.length);
    series.forEach(function (s, j) {
      s.values.forEach(function (v, i) {
        v = num(v);
        if (!fin(v) || (spec.log_y && v <= 0)) return;
        var y0 = m.t + rowH * i + rowH * 0.1 + bh * j, cy = y0 + bh / 2;
        var x0 = x(v), xb = x(base), info = barInfo(spec, s, i, v);
        var r = el("rect", { x: Math.min(x0, xb), y: y0, width: Math.max(Math.abs(x0 - xb), 1), "data-cat": i,
                             height: Math.max(bh - 1, 1), fill: barColor(s, j, i) }, svg);
        if (fin(info.lo) && fin(info.hi)) {
          el("path", { d: "M" + x(info.lo) + " " + cy + "H" + x(info.hi) + "M" + x(info.lo) + " " + (cy - 4) + "v8M" +
                       x(info.hi) + " " + (cy - 4) + "v8", stroke: "#222", fill: "none" }, svg);
        }
        if (s.points && s.points[i]) {
          s.points[i].forEach(function (p, k) {
            p = num(p);
            if (fin(p)) el("circle", { cx: x(p), cy: cy + (k - (s.points[i].length - 1) / 2) * 3, r: 2.6,
                                        fill: "#fff", stroke: "#222" }, svg);
          });
        }
        hover(r, info.text);
      });
    });
    if (!spec.log_y && xd[0] < 0 && xd[1] > 0) el("line", { x1: x(0), x2: x(0), y1: m.t, y2: H - m.b, stroke: "#666" }, svg);
    (spec.hlines || []).forEach(function (h) {
      var px = x(num(h.y)), color = h.color || "#555", name = String(h.name || "");
      if (!fin(px) || px < m.l || px > W - m.r) return;
      el("line", { x1: px, x2: px, y1: m.t, y2: H - m.b, stroke: color, "stroke-dasharray": "5 4" }, svg);
      var at = Math.max(name.length * CHAR_PX / 2 + 2, Math.min(px, W - name.length * CHAR_PX / 2 - 2));
      el("text", { x: at, y: m.t - 5, "text-anchor": "middle", "font-size": 11, fill: color, "class": "ref-label" },
         svg).textContent = name;
    });
    barLegend(fig, spec);
  }

  function drawHist(fig, spec) {
    var sz = size(fig, spec), W = sz.W, H = sz.H, M = yRoom(MARGINS, spec, H);
    var e = spec.edges.map(num), c = spec.counts;
    var xv = e.slice();
    (spec.vlines || []).forEach(function (v) { xv.push(num(v.x)); });
    var xd = domain(xv, false), yd = [0, Math.max.apply(null, c.concat([1])) * 1.08];
    var x = linear(xd[0], xd[1], M.l, W - M.r), y = linear(yd[0], yd[1], H - M.b, M.t);
    var svg = el("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H }, null);
    fig.appendChild(svg);
    axes(svg, x, y, niceTicks(xd[0], xd[1], 6), niceTicks(yd[0], yd[1], 5), W, H, spec, M);
    c.forEach(function (n, i) {
      var x0 = x(e[i]), x1 = x(e[i + 1]);
      var r = el("rect", { x: x0, y: y(n), width: Math.max(x1 - x0 - 1, 1), height: Math.max(y(0) - y(n), n ? 1 : 0),
                           fill: spec.color || COLORS[0] }, svg);
      var text = "[" + fmt(e[i]) + ", " + fmt(e[i + 1]) + "): " + n;
      r.addEventListener("mousemove", function (ev) { showTip(text, ev); });
      r.addEventListener("mouseleave", hideTip);
    });
    refLines(svg, spec, x, y, W, H, M);
  }

  function decode(b64) {
    var bin = atob(b64), out = new Uint8Array(bin.length);
    for (var k = 0; k < bin.length; k++) out[k] = bin.charCodeAt(k);
    return out;
  }
  var RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  function colour(v, kind) {
    if (kind === "counts") { var g = 255 - v; return [g, g, g]; }
    var t = v / 255 * (RAMP.length - 1), i = Math.min(Math.floor(t), RAMP.length - 2), f = t - i;
    return [0, 1, 2].map(function (k) { return Math.round(RAMP[i][k] + (RAMP[i + 1][k] - RAMP[i][k]) * f); });
  }
  // The ramp of a rates raster from 0 to spec.vmax (values above vmax share its colour).
  function colourBar(fig, spec) {
    var d = document.createElement("div"), ramp = document.createElement("canvas");
    d.className = "colorbar";
    ramp.width = 160; ramp.height = 10;
    var rctx = ramp.getContext("2d");
    for (var k = 0; k < ramp.width; k++) {
      var c = colour(Math.round(k / (ramp.width - 1) * 255), "rates");
      rctx.fillStyle = "rgb(" + c.join(",") + ")";
      rctx.fillRect(k, 0, 1, ramp.height);
    }
    function span(text) { var s = document.createElement("span"); s.textContent = text; d.appendChild(s); return s; }
    span("0");
    d.appendChild(ramp);
    span(fmt(spec.vmax)).className = "colorbar-max";
    span((spec.value_name || "") + (spec.vmax_is ? " (top colour: " + spec.vmax_is + " and above)" : ""));
    fig.appendChild(d);
  }
  function drawRaster(fig, spec) {
    var rows = spec.rows, cols = spec.cols;
    var bytes = decode(spec.data), values = spec.values ? decode(spec.values) : null, i;
    var off = document.createElement("canvas");
    off.width = cols; off.height = rows;
    var octx = off.getContext("2d"), img = octx.createImageData(cols, rows);
    for (i = 0; i < rows * cols; i++) {
      var c = colour(bytes[i], spec.colors);
      img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = 255;
    }
    octx.putImageData(img, 0, 0);
    var sz = size(fig, spec), W = sz.W, H = spec.height || Math.max(160, Math.min(420, rows * 4 + M.t + M.b));
    var canvas = document.createElement("canvas");
    canvas.width = W; canvas.height = H;
    fig.appendChild(canvas);
    var ctx = canvas.getContext("2d");
    var pw = W - M.l - M.r, ph = H - M.t - M.b, view = [0, cols], sel = null;
    function t(col) { return spec.x0 + col * spec.dx; }
    function render(z) {
      view = z || [0, cols];
      ctx.clearRect(0, 0, W, H);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, view[0], 0, view[1] - view[0], rows, M.l, M.t, pw, ph);
      ctx.strokeStyle = "#9aa5b1"; ctx.strokeRect(M.l - 0.5, M.t - 0.5, pw + 1, ph + 1);
      ctx.fillStyle = "#5b6570"; ctx.font = "11px sans-serif"; ctx.textAlign = "center";
      var x = linear(t(view[0]), t(view[1]), M.l, M.l + pw);
      niceTicks(t(view[0]), t(view[1]), 6).forEach(function (v) {
        var px = x(v);
        if (px < M.l - 0.5 || px > M.l + pw + 0.5) return;
        ctx.fillRect(px, M.t + ph, 1, 4);
        ctx.fillText(fmt(v), px, M.t + ph + 16);
      });
      ctx.fillText(spec.x_label || "", M.l + pw / 2, H - 6);
      ctx.textAlign = "right";
      ctx.fillText("0", M.l - 6, M.t + 9);
      ctx.fillText(String(rows - 1), M.l - 6, M.t + ph);
      ctx.save(); ctx.translate(14, M.t + ph / 2); ctx.rotate(-Math.PI / 2); ctx.textAlign = "center";
      ctx.fillText(spec.y_label || "", 0, 0); ctx.restore();
      (spec.vlines || []).forEach(function (v) {
        var px = x(num(v.x));
        if (px < M.l || px > M.l + pw) return;
        ctx.fillStyle = v.color || "#d62728"; ctx.fillRect(px - 1, M.t, 2, ph);
        ctx.textAlign = "left"; ctx.fillText(v.name || "", px + 3, M.t + 10);
      });
      if (sel) { ctx.fillStyle = "rgba(31,95,153,.18)"; ctx.fillRect(sel[0], M.t, sel[1], ph); }
    }
    var apply = linked(spec, render);
    render(null);
    if (spec.colors === "rates") colourBar(fig, spec);
    canvas.addEventListener("mousemove", function (ev) {
      var b = canvas.getBoundingClientRect(), mx = ev.clientX - b.left, my = ev.clientY - b.top;
      if (mx < M.l || mx >= M.l + pw || my < M.t || my >= M.t + ph) { hideTip(); return; }
      var col = Math.min(cols - 1, Math.floor(view[0] + (mx - M.l) / pw * (view[1] - view[0])));
      var row = Math.min(rows - 1, Math.floor((my - M.t) / ph * rows));
      var v = values ? values[row * cols + col] : bytes[row * cols + col] * spec.scale;
      var label = spec.row_labels ? spec.row_labels[row] : String(row);
      showTip((spec.row_name || "unit") + " " + label + "\n" + (spec.x_label || "t") + ": " + fmt(t(col)) + "\n" +
              spec.value_name + ": " + (values ? "" : "\u2248") + fmt(v), ev);
    });
    canvas.addEventListener("mouseleave", hideTip);
    brush(canvas, function () {
      return { update: function (a, w) { sel = [a, w]; render(view); },
               remove: function () { sel = null; render(view); } };
    }, M.l, M.l + pw, function (a, b) {
      var c0 = view[0] + (a - M.l) / pw * (view[1] - view[0]), c1 = view[0] + (b - M.l) / pw * (view[1] - view[0]);
      c0 = Math.max(0, Math.floor(c0)); c1 = Math.min(cols, Math.max(c0 + 2, Math.ceil(c1)));
      apply([c0, c1]);
    }, function () { apply(null); });
  }

  var DRAW = { xy: drawXY, bars: drawBars, hist: drawHist, raster: drawRaster };
  function drawOne(fig) {
    while (fig.firstChild) fig.removeChild(fig.firstChild);
    var spec = DATA[fig.getAttribute("data-fig")];
    try {
      DRAW[spec.kind](fig, spec);
      fig.setAttribute("data-drawn", "1");
    } catch (err) {
      var d = document.createElement("div");
      d.className = "err";
      d.textContent = "figure failed: " + err;
      fig.appendChild(d);
      console.error("spikefm report: figure " + fig.id + " failed: " + err);
    }
    fig.setAttribute("data-width", String(fig.clientWidth));
  }
  function figures() { return Array.prototype.slice.call(document.querySelectorAll(".fig[data-fig]")); }
  function drawAll() {
    Object.keys(LINKS).forEach(function (k) { delete LINKS[k]; });  // linked zooms of the figures drawn now
    figures().forEach(drawOne);
  }
  // Figures take their width when drawn: a resized window or a turned phone draws them again (a
  // zoom is reset), once the resizing pauses.
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () {
      if (figures().some(function (f) { return String(f.clientWidth) !== f.getAttribute("data-width"); })) {
        hideTip();
        drawAll();
      }
    }, 150);
  });
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", drawAll);
  else drawAll();
})();
"""
