// sketchmine report: one unit's dashboard (units/<layer>.html#unit=U).
// Data arrive as page scripts (dash/<layer>/unit_NNNN.js) calling sketchmineUnit.page(), which
// works from file:// (no fetch). Every data string is set with textContent; a section the run
// lacks shows the note that says how to add it (data-missing="<section>").
(function () {
  "use strict";
  var body = document.body;
  var layerId = body.getAttribute("data-layer");
  var units = parseInt(body.getAttribute("data-units"), 10) || 0;
  var PAGE = 64;
  var cache = {};
  var current = -1;
  var dom = window.sketchmineDom, el = dom.el, svgEl = dom.svgEl, tile = dom.tile, num = dom.num, fmt = dom.fmt;
  function pct(v) { var t = dom.percent(v, 2); return t === "-" ? t : t + " %"; }
  // a cell of a column: an exact 100 or 0 with the column's decimals ("100.00 %" beside "98.50 %")
  function pctCell(v) { var t = dom.percentFixed(v, 2); return t === "-" ? t : t + " %"; }
  function missing(d, section, what) {
    var p = dom.withCode(el("p", "note missing"), "no " + what + ": " + (d.missing[section] || "not stored"));
    p.setAttribute("data-missing", section);
    return p;
  }
  function section(box, title, id) {
    var s = el("section", "dash-section");
    s.id = id;
    s.appendChild(el("h2", null, title));
    box.appendChild(s);
    return s;
  }
  function table(headers, rows) {
    var t = el("table"), head = el("thead"), tr = el("tr"), tb = el("tbody");
    for (var i = 0; i < headers.length; i++) { tr.appendChild(el("th", null, headers[i])); }
    head.appendChild(tr);
    if (headers.join("")) { t.appendChild(head); }
    for (var r = 0; r < rows.length; r++) {
      var row = el("tr");
      for (var c = 0; c < rows[r].length; c++) {
        var cell = rows[r][c];
        if (cell instanceof Node) { var td = el("td"); td.appendChild(cell); row.appendChild(td); }
        else { row.appendChild(el("td", typeof cell === "number" ? "num" : null, cell)); }
      }
      tb.appendChild(row);
    }
    t.appendChild(tb);
    return t;
  }

  // Every activation the dashboard shows, as one column (unit_summary.activation_text): the
  // maximum, the mean, the quantiles, the top and bottom values and the class means are values
  // of one quantity, and the least-activating image's value is the 0 % quantile, written alike.
  function activations(d) {
    var parts = {max: [d.max], mean: [d.moments ? d.moments.mean : null], quantiles: d.quantiles ? d.quantiles.values : [],
      top: (d.top || []).map(function (e) { return e.value; }), bottom: (d.bottom || []).map(function (e) { return e.value; }),
      class_means: (d.class_means || []).map(function (c) { return c.mean; })};
    var keys = ["max", "mean", "quantiles", "top", "bottom", "class_means"], all = [], out = {}, at = 0;
    keys.forEach(function (k) { all = all.concat(parts[k]); });
    var written = dom.column(all);
    keys.forEach(function (k) { out[k] = written.slice(at, at + parts[k].length); at += parts[k].length; });
    return out;
  }

  function overview(d) {
    var a = activations(d), shown = a.max.concat(a.mean, a.quantiles);
    var rows = [["max activation", shown[0]],
      ["receptive field", d.receptive_field ? (d.receptive_field_varies ? "up to " : "") + d.receptive_field[0] + "\u00d7" + d.receptive_field[1] + " px" : "the whole image"],
      ["images mined", String(d.images) + (d.unreadable ? " (" + d.unreadable + " unreadable, skipped: in no statistic)" : "") +
        (d.complete ? "" : " (PARTIAL run)")]];
    if (d.moments) {
      rows.push(["mean of image maxima", shown[1]]);
      rows.push(["firing density", pct(d.moments.density) + (d.moments.images === null ? "" :
        " (" + d.moments.firing + " of " + d.moments.images + " images > 0)")]);
    }
    if (d.importance) {
      rows.push(["importance rank", dom.rankText(d.importance.rank, d.importance.tied, d.units)]);
      // in percentage points as the accuracy drop below, written as the layer page's table writes it
      rows.push(["prob. drop when zeroed", dom.points(d.importance.prob_drop) + " pt"]);
      rows.push(["accuracy drop when zeroed", dom.percentFixed(d.importance.acc_drop, 2) + " pt"]);
    }
    if (d.quantiles) {
      // below the sketch's resolution floor an estimate is no value, only a bound: shown as "< b"
      var bound = d.quantiles.bound || [];
      for (var i = 0; i < d.quantiles.q.length; i++) {
        var b = bound[i];
        // written as `sketchmine unit` writes it ("1 %"): toPrecision drops 0.07 * 100's float tail
        rows.push(["quantile " + +(d.quantiles.q[i] * 100).toPrecision(6) + " %", b === null || b === undefined ? shown[2 + i] :
          (b > 0 ? "< " + fmt(b, 3) : "> " + fmt(b, 3))]);
      }
    }
    var t = table(["", ""], rows);
    t.id = "overview";
    return t;
  }

  function histogram(d) {
    // bars of the image maxima; marks under the axis: top-k (red), bottom-k (blue), bin examples (green bands)
    // only the bins from the first to the last holding images (the grid spans more); an outer
    // edge at -inf/+inf (infinite maxima) is drawn at its finite neighbour
    var h = d.histogram, counts = h.counts;
    var first = 0, last = counts.length - 1;
    while (first < last && counts[first] === 0) { first++; }
    while (last > first && counts[last] === 0) { last--; }
    var edges = h.edges.slice(first, last + 2);
    counts = counts.slice(first, last + 1);
    if (edges[0] === null) { edges[0] = edges[1]; }
    if (edges[edges.length - 1] === null) { edges[edges.length - 1] = edges[edges.length - 2]; }
    var W = 640, H = 230, L = 48, R = 12, T = 10, B = 70;
    var lo = edges[0], hi = edges[edges.length - 1];
    var s = svgEl("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, "class": "hist", id: "histogram" });
    if (lo === null || hi === null) { return s; }
    var span = hi > lo ? hi - lo : 1;
    var peak = Math.max.apply(null, counts.concat([1]));
    function px(v) { return L + (Math.min(Math.max(v, lo), lo + span) - lo) * (W - L - R) / span; }
    function py(c) { return T + (H - T - B) * (1 - c / peak); }
    var base = H - B;
    s.appendChild(svgEl("line", { x1: L, x2: W - R, y1: base, y2: base, stroke: "#333" }));
    s.appendChild(svgEl("line", { x1: L, x2: L, y1: T, y2: base, stroke: "#333" }));
    s.appendChild(svgEl("text", { x: L - 4, y: T + 8, "text-anchor": "end", "font-size": 10 }, String(peak)));
    s.appendChild(svgEl("text", { x: L - 4, y: base, "text-anchor": "end", "font-size": 10 }, "0"));
    for (var i = 0; i < counts.length; i++) {
      var x0 = px(edges[i]), x1 = hi > lo ? px(edges[i + 1]) : W - R;
      var bar = svgEl("rect", { x: x0, y: py(counts[i]), width: Math.max(1, x1 - x0 - 0.5), height: base - py(counts[i]),
        fill: "#4c72b0", "class": "hist-bar" });
      bar.appendChild(svgEl("title", {}, counts[i] + " images in [" + fmt(edges[i]) + ", " + fmt(edges[i + 1]) + ")"));
      s.appendChild(bar);
    }
    s.appendChild(svgEl("text", { x: L, y: base + 12, "font-size": 10 }, fmt(lo)));
    s.appendChild(svgEl("text", { x: W - R, y: base + 12, "font-size": 10, "text-anchor": "end" }, fmt(hi)));
    function marks(entries, y, color, cls, label) {
      for (var j = 0; j < entries.length; j++) {
        if (entries[j].value === null) { continue; }
        var x = px(num(entries[j].value));  // an infinite value at the axis's end
        var m = svgEl("path", { d: "M" + x + "," + y + " l-4,8 l8,0 z", fill: color, "class": cls, opacity: 0.8 });
        m.appendChild(svgEl("title", {}, label + " " + (entries[j].rank + 1) + ": image " + entries[j].image_index + ", " + fmt(entries[j].value)));
        s.appendChild(m);
      }
      s.appendChild(svgEl("text", { x: 4, y: y + 8, "font-size": 10, fill: color }, label));
    }
    marks(d.top, base + 16, "#d62728", "mark-top", "top-" + d.top.length);
    if (d.bottom) { marks(d.bottom, base + 30, "#1f77b4", "mark-bottom", "bottom"); }
    if (d.bins) {
      for (var b = 0; b < d.bins.length; b++) {
        var bin = d.bins[b];
        if (bin.lo === null || bin.hi === null || !bin.examples.length) { continue; }
        var band = svgEl("rect", { x: px(bin.lo), y: base + 46, width: Math.max(2, px(bin.hi) - px(bin.lo) - 1), height: 8,
          fill: b % 2 ? "#2ca02c" : "#98df8a", "class": "mark-bin" });
        band.appendChild(svgEl("title", {}, "bin " + bin.bin + ": " + bin.examples.length + " examples in [" + fmt(bin.lo) + ", " + fmt(bin.hi) + ")"));
        s.appendChild(band);
      }
      s.appendChild(svgEl("text", { x: 4, y: base + 54, "font-size": 10, fill: "#2ca02c" }, "bins"));
    }
    return s;
  }

  function caption(e, value) {
    var cap = el("div", "cap");
    cap.appendChild(el("div", "cls", e["class"] === null ? "?" : e["class"]));
    if (e.value !== undefined) { cap.appendChild(el("div", "value", value)); }
    cap.appendChild(el("div", "idx", "#" + e.image_index));
    if (e.step !== undefined) { cap.appendChild(el("div", "step", "t=" + (e.step + 1) + " of " + e.steps)); }  // as the card
    cap.title = dom.isolatedPath(e.path);  // a folder named right to left moves no part of it
    return cap;
  }
  function row(box, label) {
    // a label and its strip: two cells of the section's grid (unit.css), so every label of the
    // section takes one column as wide as the widest, and the strips line up beside it
    var r = el("div", "row"), strip = el("div", "strip");
    r.appendChild(typeof label === "string" ? el("div", "label", label) : label);
    r.appendChild(strip);
    box.appendChild(r);
    return strip;
  }
  function examples(box, label, entries, d, at, written, signal) {
    // d: the strips of the set's pictures ({patches, deconv, w, h}) or null; at(e): e's tile in them;
    // written: the entries' values as the dashboard writes them (activations); signal: how the layer's
    // --method names its deconv strips (every set shares it: the report leaves out sets made otherwise).
    // Returns the captions' strip.
    at = at || function (e) { return e.rank; };
    if (d && d.patches && entries.length) {
      var pics = row(box, "patches");
      for (var i = 0; i < entries.length; i++) { pics.appendChild(tile(d.patches, at(entries[i]), d.w, d.h)); }
      if (d.deconv && signal) {
        var name = el("div", "label", signal.method);
        name.title = signal.title;
        var dec = row(box, name);
        for (var j = 0; j < entries.length; j++) { dec.appendChild(tile(d.deconv, at(entries[j]), d.w, d.h)); }
      }
    }
    var r = row(box, label), values = written || dom.column(entries.map(function (e) { return e.value; }));
    for (var k = 0; k < entries.length; k++) { r.appendChild(caption(entries[k], values[k])); }
    if (!entries.length) { r.appendChild(el("div", "cap", "(none)")); }
    return r;
  }
  function binLabel(bin, p) {
    // "bin 9" over its range "1 … 1.125", each on one line, the edges as `sketchmine unit` writes
    // them (p significant digits: more where neighbouring edges would read alike)
    var l = el("div", "label bin-label");
    l.appendChild(el("div", null, "bin " + bin.bin));
    if (bin.lo !== null) { l.appendChild(el("div", "bin-range", fmt(bin.lo, p) + " \u2026 " + fmt(bin.hi, p))); }
    return l;
  }

  function classes(d, box) {
    if (d.classes_top) {
      box.appendChild(el("h3", null, "classes among its top " + d.top.length + " images"));
      box.appendChild(table(["class", "images", "class accuracy"], d.classes_top.map(function (c) {
        return [c["class"], c.count, pctCell(c.accuracy)]; })));
    } else { box.appendChild(missing(d, "classes_top", "classes of the top images")); }
    if (d.class_means && !d.class_means.length) {
      var none = el("p", "note", "no class has a mean for this unit: none of its maps over labelled images holds a number (all NaN)");
      none.id = "no-class-means";
      box.appendChild(none);
    } else if (d.class_means) {
      box.appendChild(el("h3", null, "classes it prefers over all images (mean image maximum)"));
      var means = activations(d).class_means;  // in the maximum's column
      var t = table(["class", "mean", "images", "class accuracy"], d.class_means.map(function (c, i) {
        return [c["class"], means[i], c.images, pctCell(c.accuracy)]; }));
      t.id = "class-means";
      box.appendChild(t);
    } else { box.appendChild(missing(d, "class_means", "class means over all images")); }
  }

  function effects(d, box) {
    if (!d.effects) { box.appendChild(missing(d, "effects", "effects on the output")); return; }
    // a probability's change in percentage points, as the drops above (numbers.points); a logit's as a column
    var prob = d.effects.kind !== "logit", unit = prob ? "by (pt)" : "by (logit)";
    var t = table(["pushed up", unit, "pushed down", unit], []);
    t.id = "effects";
    var up = d.effects.up, down = d.effects.down, tb = t.tBodies[0];
    var by = function (side) {
      var vs = side.map(function (c) { return c.effect; });
      return prob ? vs.map(function (v) { return dom.points(v, true); }) :
        dom.column(vs, 3).map(function (x, i) { return vs[i] > 0 ? "+" + x : x; });
    };
    var ups = by(up), downs = by(down);
    for (var i = 0; i < Math.max(up.length, down.length); i++) {
      var row = el("tr");
      row.appendChild(el("td", null, i < up.length ? up[i]["class"] : ""));
      row.appendChild(el("td", "num", i < up.length ? ups[i] : ""));
      row.appendChild(el("td", null, i < down.length ? down[i]["class"] : ""));
      row.appendChild(el("td", "num", i < down.length ? downs[i] : ""));
      tb.appendChild(row);
    }
    box.appendChild(el("p", null, "the unit's effect on each class's " + (d.effects.kind === "logit" ? "logit" : "probability") + ": its mean change when the unit is zeroed, sign flipped (positive: the unit raises the class), over all images"));
    if (!up.length && !down.length) {  // two empty columns said nothing
      var none = el("p", "note", "zeroing this unit leaves every class's mean " + (d.effects.kind === "logit" ? "logit" : "probability") + " unchanged (a unit that never fires passes on nothing)");
      none.id = "effects-none";
      box.appendChild(none);
      return;
    }
    box.appendChild(t);
  }

  function correlated(d, box) {
    if (!d.correlated) { box.appendChild(missing(d, "correlated", "correlated units")); return; }
    var list = el("p", "correlated"), rs = dom.column(d.correlated.map(function (c) { return c.r; }), 3);
    for (var i = 0; i < d.correlated.length; i++) {
      var a = el("a", null, "unit " + d.correlated[i].unit);
      a.href = "#unit=" + d.correlated[i].unit;
      list.appendChild(a);
      list.appendChild(document.createTextNode(" (r = " + rs[i] + ")" + (i + 1 < d.correlated.length ? ", " : "")));
    }
    if (!d.correlated.length) { list.textContent = d.correlated_none || "(none)"; }  // why: a constant unit has no r
    box.appendChild(list);
  }

  function render(d) {
    var box = document.getElementById("dash");
    while (box.firstChild) { box.removeChild(box.firstChild); }
    var number = document.getElementById("unit-number");
    number.textContent = "";
    dom.line(number, [d.unit + " of " + d.units].concat(d["class"] != null ? [" (", { name: d["class"] }, ")"] : []));
    document.getElementById("unit-input").value = d.unit;
    if (d.unit !== noted) { say(null, ""); }
    var links = el("p", "dash-links");
    var card = el("a", null, "its card");
    card.href = d.card;
    links.appendChild(card);
    if (d.montage) {
      links.appendChild(document.createTextNode(" \u00b7 "));
      var m = el("a", null, "slide montage (PNG)");
      m.href = d.montage;
      m.id = "montage-link";
      links.appendChild(m);
    }
    box.appendChild(links);
    var top = section(box, "Distribution of its image maxima", "distribution");
    var row = el("div", "dash-row");
    row.appendChild(overview(d));
    if (d.histogram) { row.appendChild(histogram(d)); }
    top.appendChild(row);
    if (!d.histogram) { top.appendChild(missing(d, "histogram", "histogram")); }
    var total = d.histogram ? d.histogram.counts.reduce(function (a, b) { return a + b; }, 0) : -1;
    if (total === 0) {
      top.appendChild(el("p", "note", "no image maximum of this unit is a number (every map was all NaN): nothing to draw"));
    } else if (d.quantiles && d.quantiles.values[0] !== null && d.quantiles.values[0] === d.quantiles.values[d.quantiles.values.length - 1]) {
      top.appendChild(el("p", "note", "every image maximum of this unit is " + fmt(d.quantiles.values[0]) +
        " (a constant unit): its histogram is one value"));
    }
    var bounded = d.quantiles && (d.quantiles.bound || []).some(function (b) { return b !== null; });
    if (d.quantiles && total !== 0) {
      // three quantiles near the top all read "0.9921": the sketch's resolution, not four digits of precision
      var within = el("p", "note", "quantiles: the sketch's estimates, each within 1.5 % of the true value" +
        (bounded ? " where not written \u201c< b\u201d" : "") + " (0 % and 100 % are exact)");
      within.id = "quantile-note";
      top.appendChild(within);
    }
    if (bounded) {
      var coarse = el("p", "note", "\u201c< b\u201d: that quantile lies below the quantile sketch's resolution " +
        "(about 2^-15 of the unit's largest value of that sign, or a float32 subnormal; docs/analysis.md): it is between 0 and b, " +
        "closer it cannot say");
      coarse.id = "coarse-quantiles";
      top.appendChild(coarse);
    }
    if (!d.moments) { top.appendChild(missing(d, "moments", "firing density")); }
    if (!d.importance) { top.appendChild(missing(d, "importance", "importance")); }
    var ex = section(box, "Examples at every level", "examples");
    ex.appendChild(el("h3", null, "top " + d.top.length + " (most activating)"));
    var written = activations(d);
    examples(ex, "class / value / image", d.top, d, null, written.top, d.signal);
    // a layer ranked by log-odds (the softmax) shows probabilities: equal ones are no ties
    var ties = body.getAttribute("data-ranked") === "log-odds" ? null :
      dom.topTies(d.top.map(function (e) { return e.value; }), written.top[d.top.length - 1], d.k);
    if (ties) { var tn = el("p", "note", ties); tn.id = "top-ties"; ex.appendChild(tn); }
    ex.appendChild(el("h3", null, "bottom (least activating)"));
    if (d.bottom) { examples(ex, "class / value / image", d.bottom, d.bottom_pictures || null, null, written.bottom, d.signal); } else { ex.appendChild(missing(d, "bottom", "bottom images")); }
    if (d.bottom && !d.bottom_pictures) { ex.appendChild(missing(d, "bottom_pictures", "pictures of these images")); }
    ex.appendChild(el("h3", null, "by activation bin"));
    if (d.bins) {
      var lowest = d.bins.length, highest = -1;
      for (var q = 0; q < d.bins.length; q++) {
        if (d.bins[q].examples.length) { lowest = Math.min(lowest, q); highest = Math.max(highest, q); }
      }
      var shownBins = d.bins.slice(lowest, highest + 1), more = false;
      var p = dom.enough([].concat.apply([], shownBins.map(function (bin) { return [bin.lo, bin.hi]; })), 4);
      for (var b = highest; b >= lowest; b--) {  // the grid's empty bins outside [min, max] left out
        var bin = d.bins[b];
        var per = d.bin_pictures ? d.bin_pictures.m : 0;
        var caps = examples(ex, binLabel(bin, p), bin.examples,
          d.bin_pictures || null, (function (b) { return function (e) { return b * per + e.slot; }; })(bin.bin), null, d.signal);
        if (bin.more) {
          var m = el("div", "cap more", "+" + bin.more + " more");
          m.title = "the run keeps " + bin.more + " more examples of this bin than the page shows";
          caps.appendChild(m);
          more = true;
        }
      }
      if (more) {
        // the run keeps 8 examples a bin (its histogram counts every image): the command lists those kept
        var all = el("p", "note", "+N more: the run keeps more examples of the bin than the page shows; ");
        all.appendChild(dom.code(d.all_examples || "sketchmine unit RUN LAYER UNIT --json"));
        all.appendChild(document.createTextNode(" lists every kept example (a bin's image count is the histogram's)"));
        all.id = "bins-more";
        ex.appendChild(all);
      }
      if (!d.bin_pictures) { ex.appendChild(missing(d, "bin_pictures", "pictures of these images")); }
    } else { ex.appendChild(missing(d, "bins", "examples per bin")); }
    classes(d, section(box, "Classes it prefers", "classes"));
    effects(d, section(box, "Classes it pushes", "pushes"));
    correlated(d, section(box, "Units that move with it", "correlated"));
    body.setAttribute("data-rendered", String(d.unit));
  }

  function show(u, replace) {
    if (!units) { return; }
    u = Math.max(0, Math.min(units - 1, u));
    // the unit already shown: nothing to redraw (a redraw under the pointer, e.g. when the number
    // box loses focus on a click, would swallow that click)
    if (u === current && body.getAttribute("data-rendered") === String(u)) { return; }
    current = u;
    var hash = "#unit=" + u;
    if (window.location.hash !== hash) {
      if (replace) { history.replaceState(null, "", hash); } else { window.location.hash = hash; }
    }
    var p = Math.floor(u / PAGE);
    if (cache[p]) { render(cache[p][u - p * PAGE]); return; }
    var s = document.createElement("script");
    s.src = "../dash/" + layerId + "/unit_" + String(p).padStart(4, "0") + ".js";
    document.head.appendChild(s);
  }

  // What a page's units share arrives first (report_unit.py, dash_data.py): each unit is put
  // back as LayerSummary.unit gave it, its entries' path, label, class and accuracy read from the
  // page's tables, its layer's constants and the notes it shares with the page's other units.
  var shared = {};
  function whole(d, s) {
    function entry(e) {
      var im = s.images[String(e.image_index)], c = im.label === null ? null : s.classes[String(im.label)];
      return Object.assign({}, e, { path: im.path, label: im.label, "class": c ? c["class"] : null,
                                    accuracy: c ? c.accuracy : null });
    }
    var u = Object.assign({}, s.layer, d);
    u.missing = {};
    Object.keys(d.missing).forEach(function (k) { u.missing[k] = d.missing[k] || s.notes[k]; });
    if (u.top) { u.top = u.top.map(entry); }
    if (u.bottom) { u.bottom = u.bottom.map(entry); }
    if (u.bins) {  // an example written as its image index alone fills the bin's slot of its place
      u.bins = u.bins.map(function (b) {
        return Object.assign({}, b, { examples: b.examples.map(function (e, j) {
          return entry(typeof e === "number" ? { image_index: e, slot: j } : e); }) });
      });
    }
    return u;
  }

  window.sketchmineUnit = {
    shared: function (p, s) { shared[p] = s; },
    page: function (p, data) {
      var s = shared[p];
      if (s) { data = data.map(function (d) { return whole(d, s); }); }
      cache[p] = data;
      if (Math.floor(current / PAGE) === p) { render(data[current - p * PAGE]); }
    },
    show: show,
    whole: whole
  };

  function fromHash() {
    var m = /unit=(\d+)/.exec(window.location.hash);
    return m ? parseInt(m[1], 10) : 0;
  }

  var noted = null;  // the unit the note beside the number box speaks of: cleared once another is shown
  function say(u, text) {
    noted = u;
    var note = document.getElementById("unit-note");
    if (note) { note.textContent = text; note.hidden = !text; }
  }
  function typed(box) {
    // the number box: a unit of the layer is shown; anything else is brought to the nearest unit,
    // and the box and a note say so (a box left reading "200" beside unit 95 would mislead)
    var text = box.value.trim(), v = Number(text);
    if (!units) { return; }
    if (text === "" || !isFinite(v)) {
      box.value = current;
      say(current, "type a unit number, 0 to " + (units - 1));
      return;
    }
    var u = Math.max(0, Math.min(units - 1, Math.round(v)));
    if (u !== v) { say(u, "no unit " + text + " in this layer (its units are 0 to " + (units - 1) + "): showing unit " + u); }
    else { say(null, ""); }
    box.value = u;
    show(u);
  }

  function requested() {
    // the unit a link asks for (#unit=U); one outside the layer, or no number, is brought to the
    // nearest unit and said beside the box, as the box says it (a link to unit 500 showed unit 95
    // without a word)
    var m = /unit=([^&]*)/.exec(window.location.hash);
    if (!m || !units) { return fromHash(); }
    var text = m[1];
    try { text = decodeURIComponent(text); } catch (err) { /* a stray "%" (#unit=%): read as typed */ }
    var v = Number(text);
    if (text === "" || !isFinite(v)) { say(0, "no unit '" + text + "' in this layer: showing unit 0"); return 0; }
    var u = Math.max(0, Math.min(units - 1, Math.round(v)));
    if (u !== v) { say(u, "no unit " + text + " in this layer (its units are 0 to " + (units - 1) + "): showing unit " + u); }
    return u;
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("prev-unit").addEventListener("click", function () { show(current - 1); });
    document.getElementById("next-unit").addEventListener("click", function () { show(current + 1); });
    document.getElementById("unit-input").addEventListener("change", function (ev) { typed(ev.target); });
    window.addEventListener("hashchange", function () { var u = requested(); if (u !== current) { show(u); } });
    show(requested(), true);
  });
})();
