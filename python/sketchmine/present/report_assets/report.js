// sketchmine report: renders unit cards of one layer, a page of units at a time.
// Data arrive as page scripts (data/<layer>/page_NNNN.js) calling sketchmineReport.page(),
// which works from file:// (no fetch). Every data string is set with textContent.
(function () {
  "use strict";
  var body = document.body;
  var layerId = body.getAttribute("data-layer");
  var pages = parseInt(body.getAttribute("data-pages"), 10) || 0;
  var units = parseInt(body.getAttribute("data-units"), 10);  // "rank 33 of 96", as the dashboard says it
  var perPage = parseInt(body.getAttribute("data-page-size"), 10);  // the units of a page of cards
  var k = parseInt(body.getAttribute("data-k"), 10);  // a full top-k: its last places may be ties (dom.topTies)
  var logOdds = body.getAttribute("data-ranked") === "log-odds";
  var cache = {};
  var current = -1;

  var dom = window.sketchmineDom, el = dom.el, tile = dom.tile, svgEl = dom.svgEl, num = dom.num, fmt = dom.fmt;

  function single(src) {
    var t = el("div", "tile");
    var img = document.createElement("img");
    img.src = src;
    img.alt = "";
    img.style.width = "64px";
    t.appendChild(img);
    return t;
  }

  function fmtAcc(a) { return dom.percent(a, 2); }


  function trace(values, t) {
    // the unit's activation at every step of one sequence, 64 x 36 px, the entry's step marked;
    // steps whose value is no finite number (NaN, an overflow) are left out of the line
    var w = 64, h = 36, pad = 3;
    values = values.map(num);
    var finite = values.filter(function (v) { return v !== null && isFinite(v); });
    var lo = finite.length ? Math.min.apply(null, finite) : 0, hi = finite.length ? Math.max.apply(null, finite) : 1;
    if (!(hi > lo)) { hi = lo + 1; }
    var n = values.length;
    function px(i) { return n > 1 ? pad + i * (w - 2 * pad) / (n - 1) : w / 2; }
    function py(v) { return h - pad - (v - lo) * (h - 2 * pad) / (hi - lo); }
    var s = svgEl("svg", { width: w, height: h, viewBox: "0 0 " + w + " " + h, "class": "trace" });
    var pts = [];
    for (var i = 0; i < n; i++) {
      if (values[i] !== null && isFinite(values[i])) { pts.push(px(i).toFixed(1) + "," + py(values[i]).toFixed(1)); }
    }
    s.appendChild(svgEl("polyline", { points: pts.join(" "), fill: "none", stroke: "#4c72b0", "stroke-width": 1.5 }));
    if (t >= 0 && t < n && values[t] !== null && isFinite(values[t])) {
      s.appendChild(svgEl("line", { x1: px(t), x2: px(t), y1: 0, y2: h, stroke: "#d62728", "stroke-width": 1, "stroke-dasharray": "2,2" }));
      s.appendChild(svgEl("circle", { cx: px(t), cy: py(values[t]), r: 2.5, fill: "#d62728" }));
    }
    s.appendChild(svgEl("title", {}, "activation over " + n + " steps, min " + fmt(lo, 3) + ", max " + fmt(hi, 3) +
      (finite.length < n ? " (" + (n - finite.length) + " steps not finite: " + values.filter(function (v) {
        return v === null || !isFinite(v); }).map(function (v) { return fmt(v); }).join(", ") + ")" : "")));
    var box = el("div", "tile trace-tile");
    box.appendChild(s);
    return box;
  }

  var montages = (body.getAttribute("data-montages") || "").split(",");

  function dashLinks(unit) {
    // the unit's dashboard (units/<layer>.html) and, for the units listed in data-montages, its slide
    var links = el("div", "dash-links");
    var a = el("a", null, "dashboard");
    a.href = "../units/" + layerId + ".html#unit=" + unit;
    links.appendChild(a);
    if (montages.indexOf(String(unit)) >= 0) {
      links.appendChild(document.createTextNode(" \u00b7 "));
      var m = el("a", "montage-link", "slide");
      m.href = "../montage/" + layerId + "/" + unit + ".png";
      links.appendChild(m);
    }
    return links;
  }

  function classesLine(entries) {
    // the seed's "Classes with performance", condensed: each class of the top-k once, most images
    // first (ties: the class of the better image first), with how many of the images are of it
    // (the captions above give them one by one). Where two of the run's classes share a name, the
    // entries carry each class's position (label), counted by it; an entry without a label is not a class named "?".
    // Returns the line as dom.line's parts (each class name isolated).
    var seen = {}, order = [];
    entries.forEach(function (e) {
      var key = e.label !== undefined ? (e.label === null ? "none" : "label " + e.label) :
        (e["class"] === null ? "none" : "name " + e["class"]);
      if (!Object.prototype.hasOwnProperty.call(seen, key)) {
        seen[key] = { n: 0, acc: e.accuracy, name: e["class"] === null ? "?" : e["class"] };
        order.push(key);
      }
      seen[key].n++;
    });
    if (order.length === entries.length && entries.length > 1) {
      return ["Classes with performance: a different class for each of the " + entries.length + " images"];
    }
    var first = order.slice();  // a stable sort by count: Array.sort is stable in every current browser
    order.sort(function (a, b) { return seen[b].n - seen[a].n || first.indexOf(a) - first.indexOf(b); });
    var parts = ["Classes with performance: "];
    order.forEach(function (k, i) {
      parts.push((i ? ", " : "") + seen[k].n + " ", { name: seen[k].name },
                 " (" + fmtAcc(seen[k].acc) + (seen[k].acc === null ? "" : " %") + ")");
    });
    return parts;
  }

  function card(u) {
    var c = el("div", "card");
    c.id = "unit-" + u.unit;
    // the header's max is the first entry's value: both from one column, written alike
    var n = u.entries.length;
    var shown = dom.column([u.max].concat(u.entries.map(function (e) { return e.value; })));
    c.appendChild(dom.line(el("h3"), ["unit " + u.unit].concat(u["class"] != null ? [" \u00b7 ", { name: u["class"] }] : [],
      [" \u00b7 max " + shown[0]])));
    c.appendChild(dashLinks(u.unit));
    if (u.importance) {
      var im = u.importance;
      c.appendChild(el("div", "imp", "importance rank " + dom.rankText(im.rank, im.tied, isNaN(units) ? undefined : units) + ": prob. drop " +
        dom.points(im.prob_drop) + " pt, accuracy drop " + dom.percentFixed(im.acc_drop, 2) + " pt"));
    }
    function strip(label, src, w, h, per, title) {
      var r = el("div", "row");
      var l = r.appendChild(el("div", "label", label));
      if (title) { l.title = title; }
      for (var i = 0; i < n; i++) {
        if (per) { r.appendChild(single(u.entries[i].image)); }
        else { r.appendChild(tile(src, u.entries[i].rank, w, h)); }
      }
      c.appendChild(r);
    }
    if (u.patches) { strip("patches", u.patches, u.w, u.h, false); }
    // named by the layer's --method (deconvnet, guided, gradient): only deconvnet's are deconvolutions
    if (u.deconv) { strip(u.signal.method, u.deconv, u.w, u.h, false, u.signal.title); }
    if (u.optimized) {  // visualize --optimize: the input that drives the unit hardest
      var o = el("div", "row");
      // a unit whose objective gave no gradient at any step (after a ReLU): its image is the start noise
      o.appendChild(el("div", "label", u.optimized.flat ? "not optimised" : "optimised"));
      var ot = single(u.optimized.src);
      ot.title = (u.optimized.flat ? "no gradient at any step: the starting noise, not an optimised input; " : "") +
        "feature visualisation (" + u.optimized.method + "), unit value " +
        (u.optimized.peak === null ? "-" : u.optimized.peak.toPrecision(4));
      o.appendChild(ot);
      c.appendChild(o);
    }
    if (!u.patches && n && u.entries[0].image) {
      strip(u.entries[0].t === undefined ? "images" : "drawing at step", null, 0, 0, true);
    }
    if (n && u.entries[0].t !== undefined) {
      var steps = el("div", "row");
      steps.appendChild(el("div", "label", "step"));
      for (var j = 0; j < n; j++) {
        steps.appendChild(el("div", "cap step", "t=" + (u.entries[j].t + 1) + " of " + u.entries[j].steps));
      }
      c.appendChild(steps);
      if (u.entries[0].trace) {
        var tr = el("div", "row");
        tr.appendChild(el("div", "label", "activation over time"));
        for (var q = 0; q < n; q++) {
          tr.appendChild(u.entries[q].trace ? trace(u.entries[q].trace, u.entries[q].t) : el("div", "tile"));
        }
        c.appendChild(tr);
      }
    }
    var caps = el("div", "row");
    caps.appendChild(el("div", "label", "class / acc % / value"));
    for (var i = 0; i < n; i++) {
      var e = u.entries[i];
      var cap = el("div", "cap");
      cap.appendChild(el("div", "cls", e["class"] === null ? "?" : e["class"]));
      cap.appendChild(el("div", null, fmtAcc(e.accuracy)));
      cap.appendChild(el("div", "value", shown[i + 1]));
      cap.title = dom.isolatedPath(e.path);  // a folder named right to left moves no part of it
      caps.appendChild(cap);
    }
    c.appendChild(caps);
    if (n) { c.appendChild(dom.line(el("div", "perf"), classesLine(u.entries))); }
    // a layer ranked by log-odds (the softmax) shows probabilities: equal ones are no ties (the layer's note says so)
    var ties = logOdds ? null : dom.topTies(u.entries.map(function (e) { return e.value; }), shown[n], k);
    if (ties) { c.appendChild(el("div", "perf ties", ties)); }
    return c;
  }

  function render(p) {
    var box = document.getElementById("cards");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    var units = cache[p];
    for (var i = 0; i < units.length; i++) { box.appendChild(card(units[i])); }
    document.getElementById("page-label").textContent = "page " + (p + 1) + " of " + pages;
    body.setAttribute("data-rendered", String(p));
    reveal();
  }

  var target = null;  // the unit a link asked for (#page=P&unit=U): its card is scrolled to once shown
  function reveal() {
    if (target === null) { return; }
    var c = document.getElementById("unit-" + target);
    if (!c) { return; }
    var marked = document.querySelector(".card.target");
    if (marked) { marked.classList.remove("target"); }
    c.scrollIntoView({ block: "start" });
    c.classList.add("target");
    target = null;
  }

  function show(p, replace, unit) {
    // `replace`: the page shown on arrival rewrites the URL instead of adding a history entry,
    // so the browser's Back button leaves the layer page in one press. `unit`: a card to scroll to.
    if (pages === 0) { return; }
    p = Math.max(0, Math.min(pages - 1, p));
    if (p === current && body.getAttribute("data-rendered") === String(p)) {  // shown: no redraw
      if (unit !== undefined && unit !== null) { target = unit; reveal(); }
      return;
    }
    current = p;
    target = unit === undefined || unit === null ? null : unit;
    var hash = "#page=" + (p + 1) + (target === null ? "" : "&unit=" + target);
    if (window.location.hash !== hash) {
      if (replace) { history.replaceState(null, "", hash); } else { window.location.hash = hash; }
    }
    if (cache[p]) { render(p); return; }
    var s = document.createElement("script");
    s.src = "../data/" + layerId + "/page_" + String(p).padStart(4, "0") + ".js";
    document.head.appendChild(s);
  }

  window.sketchmineReport = {
    page: function (p, units) { cache[p] = units; if (p === current) { render(p); } },
    show: show
  };

  function fromHash() {
    // the page a link asks for; a link naming a unit (#unit=70, as a dashboard's hash reads) is
    // taken to that unit's page, whatever page it names: its card is on no other
    var u = unitFromHash(), m = /page=(\d+)/.exec(window.location.hash);
    if (u !== null && perPage > 0 && u < units) { return Math.floor(u / perPage); }
    return m ? parseInt(m[1], 10) - 1 : 0;
  }
  function unitFromHash() {
    var m = /unit=(\d+)/.exec(window.location.hash);
    return m ? parseInt(m[1], 10) : null;
  }

  function sortable(table) {
    // click a header: sort the rows by that column (numbers in data-v; empty = NaN, last);
    // a second click reverses. Rows are moved, never rebuilt from strings.
    var heads = table.tHead.rows[0].cells;
    var state = { col: -1, dir: 1 };
    function key(row, col) {
      var v = row.cells[col].getAttribute("data-v");
      return v === null || v === "" ? NaN : parseFloat(v);
    }
    function mark() {
      // the sorted column says which way (▲ / ▼ from report.css); the others that they sort
      for (var h = 0; h < heads.length; h++) {
        heads[h].setAttribute("aria-sort", h === state.col ? (state.dir > 0 ? "ascending" : "descending") : "none");
      }
      if (state.col >= 0) { table.setAttribute("data-sorted", state.col + (state.dir > 0 ? "+" : "-")); }
    }
    function arrived() {
      // the column the rows arrive ordered by, as the page says it (data-sorted="1-": column 1,
      // descending; the importance table arrives most important first)
      var m = /^(\d+)([+-])$/.exec(table.getAttribute("data-sorted") || "");
      if (m && Number(m[1]) < heads.length) { state.col = Number(m[1]); state.dir = m[2] === "+" ? 1 : -1; }
    }
    function sortBy(col) {
      state.dir = state.col === col ? -state.dir : (col === 0 ? 1 : -1);
      state.col = col;
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, col), y = key(b, col);
        if (isNaN(x) || isNaN(y)) { return isNaN(x) === isNaN(y) ? 0 : (isNaN(x) ? 1 : -1); }
        return x === y ? key(a, 0) - key(b, 0) : (x - y) * state.dir;
      });
      for (var i = 0; i < rows.length; i++) { body.appendChild(rows[i]); }
      mark();
    }
    arrived();
    mark();
    for (var i = 0; i < heads.length; i++) {
      (function (col) {
        // a header sorts from the keyboard as from the mouse: Tab reaches it, Enter or Space sorts
        heads[col].tabIndex = 0;
        heads[col].addEventListener("click", function () { sortBy(col); });
        heads[col].addEventListener("keydown", function (e) {
          if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(col); }
        });
      })(i);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var tables = document.querySelectorAll("table.sortable");
    for (var t = 0; t < tables.length; t++) { sortable(tables[t]); }
    var prev = document.getElementById("prev"), next = document.getElementById("next");
    if (prev) { prev.addEventListener("click", function () { show(current - 1); }); }
    if (next) { next.addEventListener("click", function () { show(current + 1); }); }
    window.addEventListener("hashchange", function () {
      var p = fromHash(), u = unitFromHash();
      if (p !== current) { show(p, false, u); } else if (u !== null) { target = u; reveal(); }
    });
    show(fromHash(), true, unitFromHash());
  });
})();
