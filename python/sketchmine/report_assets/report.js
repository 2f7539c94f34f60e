// sketchmine report: renders unit cards of one layer, a page of units at a time.
// Data arrive as page scripts (data/<layer>/page_NNNN.js) calling sketchmineReport.page(),
// which works from file:// (no fetch). Every data string is set with textContent.
(function () {
  "use strict";
  var body = document.body;
  var layerId = body.getAttribute("data-layer");
  var pages = parseInt(body.getAttribute("data-pages"), 10) || 0;
  var cache = {};
  var current = -1;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function tile(src, i, w, h) {
    // one tile of a horizontal strip (k tiles of w x h pixels), shown 64 px high
    var t = el("div", "tile");
    var scale = 64 / h;
    t.style.width = Math.round(w * scale) + "px";
    var img = document.createElement("img");
    img.src = src;
    img.alt = "";
    img.style.marginLeft = (-i * w * scale) + "px";
    t.appendChild(img);
    return t;
  }

  function single(src) {
    var t = el("div", "tile");
    var img = document.createElement("img");
    img.src = src;
    img.alt = "";
    img.style.width = "64px";
    t.appendChild(img);
    return t;
  }

  function fmtAcc(a) { return a === null ? "-" : (a * 100).toFixed(2); }

  function card(u) {
    var c = el("div", "card");
    c.id = "unit-" + u.unit;
    c.appendChild(el("h3", null, "unit " + u.unit + " \u00b7 max " + (u.max === null ? "-" : u.max.toPrecision(5))));
    var n = u.entries.length;
    function strip(label, src, w, h, per) {
      var r = el("div", "row");
      r.appendChild(el("div", "label", label));
      for (var i = 0; i < n; i++) {
        if (per) { r.appendChild(single(u.entries[i].image)); }
        else { r.appendChild(tile(src, u.entries[i].rank, w, h)); }
      }
      c.appendChild(r);
    }
    if (u.patches) { strip("patches", u.patches, u.w, u.h, false); }
    if (u.deconv) { strip("deconv", u.deconv, u.w, u.h, false); }
    if (!u.patches && n && u.entries[0].image) { strip("images", null, 0, 0, true); }
    var caps = el("div", "row");
    caps.appendChild(el("div", "label", "class / acc % / value"));
    var perf = [];
    for (var i = 0; i < n; i++) {
      var e = u.entries[i];
      var cap = el("div", "cap");
      cap.appendChild(el("div", "cls", e.cls === null ? "?" : e.cls));
      cap.appendChild(el("div", null, fmtAcc(e.acc)));
      cap.appendChild(el("div", null, e.value.toPrecision(4)));
      cap.title = e.path;
      caps.appendChild(cap);
      perf.push((e.cls === null ? "?" : e.cls) + " " + fmtAcc(e.acc));
    }
    c.appendChild(caps);
    c.appendChild(el("div", "perf", "Classes with performance: " + perf.join(" ")));
    return c;
  }

  function render(p) {
    var box = document.getElementById("cards");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    var units = cache[p];
    for (var i = 0; i < units.length; i++) { box.appendChild(card(units[i])); }
    document.getElementById("page-label").textContent = "page " + (p + 1) + " of " + pages;
    body.setAttribute("data-rendered", String(p));
  }

  function show(p) {
    if (pages === 0) { return; }
    p = Math.max(0, Math.min(pages - 1, p));
    current = p;
    if (window.location.hash !== "#page=" + (p + 1)) { window.location.hash = "page=" + (p + 1); }
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
    var m = /page=(\d+)/.exec(window.location.hash);
    return m ? parseInt(m[1], 10) - 1 : 0;
  }

  document.addEventListener("DOMContentLoaded", function () {
    var prev = document.getElementById("prev"), next = document.getElementById("next");
    if (prev) { prev.addEventListener("click", function () { show(current - 1); }); }
    if (next) { next.addEventListener("click", function () { show(current + 1); }); }
    window.addEventListener("hashchange", function () { var p = fromHash(); if (p !== current) { show(p); } });
    show(fromHash());
  });
})();
