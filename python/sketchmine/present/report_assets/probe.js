// sketchmine live probe: draw, and watch the run's model respond, in the browser.
// The model runs in onnxruntime-web (WebAssembly, one thread). Everything is loaded by <script>
// tags (probe/ort.wasm.min.js, probe/ort-loader.js and wasm-NNN.js: the runtime's loader and its .wasm
// in base64 pieces; model.js: metadata; graph-NNN.js: the ONNX graph in base64 pieces), because
// Chromium loads neither .wasm nor ES modules from file://.
// The graph holds the run's preprocessing (/255, normalisation); this script brings the canvas to
// the model's input size with the miner's resize (torch's antialiased bilinear), grey or RGB as the
// model takes it. window.sketchmine.probe(pixels) is the one inference function: tests and the UI
// both call it. Numbers are written with the report's own helpers (assets/dom.js), so a
// probability or a unit's value reads here as it does on the report's pages.
(function () {
  "use strict";
  var status = document.getElementById("probe-status");
  var M = window.sketchmineProbeModel;
  function lost() {
    // the first of the probe's files that did not load (a copied report may miss some): named, not a hang
    if (!M) { return "probe/model.js"; }
    if (!window.sketchmineDom) { return "assets/dom.js"; }
    if (typeof window.sketchmineProbePixels !== "function") { return "assets/probe_pixels.js"; }
    if (typeof ort === "undefined") { return "probe/ort.wasm.min.js"; }
    if (typeof window.sketchmineOrtMjs !== "string") { return "probe/ort-loader.js"; }
    var got = window.sketchmineChunks || {}, kinds = ["wasm", "graph"];
    for (var i = 0; i < kinds.length; i++) {
      var want = (M.pieces || {})[kinds[i]] || [], have = (got[kinds[i]] || []).length;
      if (have < want.length) {
        return want.length === 1 ? "probe/" + want[0] : "one of probe/" + want.join(", probe/") + " (" + have + " of " + want.length + " loaded)";
      }
    }
    return null;
  }
  var gone = lost();
  if (gone) {
    status.textContent = "the probe cannot start: " + gone + " is missing or did not load (copy the probe/ folder whole, or write the report again)";
    document.body.setAttribute("data-failed", "1");
    return;
  }
  var dom = window.sketchmineDom, el = dom.el;
  var LINKS = window.sketchmineProbeLinks || null;
  var H = M.size[0], W = M.size[1], C = M.sequence ? 1 : (M.channels || 1);  // C: the input's channels, 1 grey or 3 RGB
  var S = Math.max(1, Math.ceil(280 / Math.max(H, W)));  // canvas pixels per model pixel
  var P = window.sketchmineProbePixels(H, W), resize = P.resize, toBytes = P.toBytes, luma = P.luma, plane = P.plane;
  var session = null, lastMaps = {}, queue = Promise.resolve();
  // latencies: ms from the first change an update covers to its predictions shown;
  // strokeLatencies: ms from a stroke's end (pointerup) to the predictions that include it
  var api = { meta: M, updates: 0, lastLatency: null, latencies: [], strokeLatencies: [] };
  window.sketchmine = api;

  function b64(s) {
    if (typeof Uint8Array.fromBase64 === "function") { return Uint8Array.fromBase64(s); }
    var b = atob(s), a = new Uint8Array(b.length);
    for (var i = 0; i < b.length; i++) { a[i] = b.charCodeAt(i); }
    return a;
  }

  function pieces(kind) {
    // the base64 pieces the probe/<kind>-NNN.js scripts pushed, decoded into one array
    var parts = (window.sketchmineChunks[kind] || []).map(b64), n = 0, at = 0;
    parts.forEach(function (p) { n += p.length; });
    var all = new Uint8Array(n);
    parts.forEach(function (p) { all.set(p, at); at += p.length; });
    window.sketchmineChunks[kind] = null;
    return all;
  }

  function toInput(data, w, h) {
    // RGBA bytes w×h → the model's input bytes H×W×C (channels last): grey by luma for a grey model,
    // the RGB planes for a colour one, each resized by the miner's resize and rounded
    if (C === 1) { return toBytes(resize(luma(data, w * h), w, h, W, H)); }
    var out = new Uint8Array(H * W * 3);
    for (var c = 0; c < 3; c++) {
      var p = toBytes(resize(plane(data, w * h, c), w, h, W, H));
      for (var i = 0; i < H * W; i++) { out[3 * i + c] = p[i]; }
    }
    return out;
  }
  function greyOf(px) {
    // the model's input bytes (grey, or RGB channels last) as grey bytes, for pictures on the page
    if (px.length === H * W) { return px; }
    var g = new Uint8Array(H * W);
    for (var i = 0; i < H * W; i++) { g[i] = Math.round(0.299 * px[3 * i] + 0.587 * px[3 * i + 1] + 0.114 * px[3 * i + 2]); }
    return g;
  }
  function rgba(px) {
    // the model's input bytes → ImageData-style RGBA for a canvas W×H
    var d = new Uint8ClampedArray(4 * H * W), rgb = px.length !== H * W;
    for (var i = 0; i < H * W; i++) {
      d[4 * i] = rgb ? px[3 * i] : px[i]; d[4 * i + 1] = rgb ? px[3 * i + 1] : px[i]; d[4 * i + 2] = rgb ? px[3 * i + 2] : px[i]; d[4 * i + 3] = 255;
    }
    return d;
  }
  function picture(px, cls) {
    // a W×H canvas showing the input bytes px
    var c = el("canvas", cls); c.width = W; c.height = H;
    var g = c.getContext("2d"), d = g.createImageData(W, H);
    d.data.set(rgba(px));
    g.putImageData(d, 0, 0);
    return c;
  }

  // ---- sequence runs: the drawing as the run's progressive frames (data/sequences.py, probe_pixels.js) ----
  var SEQ = M.sequence || null;
  api.frames = function (px) {
    // the run's T frames of the drawing px (H×W grey bytes): T*H*W bytes, the last one px itself
    return P.frames(px, SEQ);
  };

  // ---- inference ----
  function topUnits(values, n) {
    var idx = [];
    for (var i = 0; i < values.length; i++) { idx.push(i); }
    idx.sort(function (a, b) { return values[b] - values[a] || a - b; });
    return idx.slice(0, n).map(function (u) { return [u, values[u]]; });
  }
  api.probe = function (pixels) {
    if (!session) { return Promise.reject(new Error("the probe's model is not loaded yet (await sketchmine.ready)")); }
    if (!pixels || (pixels.length !== H * W && pixels.length !== H * W * C)) {
      return Promise.reject(new Error("probe(pixels) takes the model's input, " + H + "×" + W + " = " + (H * W) +
                                      " grey values 0-255, row-major" + (C === 3 ? ", or " + (H * W * 3) +
                                      " RGB values (channels last)" : "") + "; got " + (pixels ? pixels.length : pixels)));
    }
    var src = SEQ ? api.frames(pixels) : pixels, x = new Float32Array(SEQ ? src.length : C * H * W), n = H * W;
    if (SEQ || src.length === x.length && C === 1) { for (var i = 0; i < x.length; i++) { x[i] = src[i]; } }
    else {  // to planes (C, H, W); grey repeated to every channel, as the miner repeats a grey image
      var rgb = src.length === 3 * n;
      for (var c = 0; c < C; c++) { for (var j = 0; j < n; j++) { x[c * n + j] = rgb ? src[3 * j + c] : src[j]; } }
    }
    var feeds = SEQ ? { frames: new ort.Tensor("float32", x, [1, SEQ.steps, 1, H, W]) }
      : { pixels: new ort.Tensor("float32", x, [1, C, H, W]) };
    var run = queue.then(function () { return session.run(feeds); });
    queue = run.catch(function () { return null; });
    return run.then(function (out) {
      var layers = {}, maps = {};
      M.layers.forEach(function (l, i) {
        layers[l.name] = topUnits(out["max" + i].data, M.top);
        if (l.grid) { maps[l.name] = out["map" + i].data; }
      });
      lastMaps = maps;
      var r = { probs: Array.from(out.probs.data), layers: layers };
      if (M.step_probs) {
        var c = out.probs.data.length;
        r.steps = [];
        for (var t = 0; t < SEQ.steps; t++) { r.steps.push(Array.from(out.steps.data.subarray(t * c, (t + 1) * c))); }
      }
      return r;
    });
  };

  // ---- the drawing pad ----
  var pad = document.getElementById("pad"), ctx = pad.getContext("2d", { willReadFrequently: true });
  pad.width = W * S; pad.height = H * S;
  var INK = M.ink === "light" ? "#ffffff" : "#000000", BG = M.ink === "light" ? "#000000" : "#ffffff";
  // base: {px, img} of a loaded or picked image, px its bytes at the model's input (H×W×C);
  // strokes are also drawn alone on `layer` (transparent), whose coverage is what they add over a base
  var strokes = [], current = null, base = null, history = [];
  var layer = el("canvas"), lctx = layer.getContext("2d", { willReadFrequently: true });
  layer.width = pad.width; layer.height = pad.height;
  var width = document.getElementById("width");
  width.min = 1; width.max = String(8 * S); width.value = String(Math.round(2.5 * S));

  function paint(g) {
    g.strokeStyle = INK; g.fillStyle = INK; g.lineCap = "round"; g.lineJoin = "round";
    strokes.forEach(function (s) {
      g.lineWidth = s.w;
      if (s.pts.length === 1) { g.beginPath(); g.arc(s.pts[0][0], s.pts[0][1], s.w / 2, 0, 2 * Math.PI); g.fill(); return; }
      g.beginPath(); g.moveTo(s.pts[0][0], s.pts[0][1]);
      for (var i = 1; i < s.pts.length; i++) { g.lineTo(s.pts[i][0], s.pts[i][1]); }
      g.stroke();
    });
  }
  function redraw() {
    ctx.fillStyle = BG;
    ctx.fillRect(0, 0, pad.width, pad.height);
    if (base) { ctx.imageSmoothingEnabled = false; ctx.drawImage(base.img, 0, 0, pad.width, pad.height); }
    paint(ctx);
    lctx.clearRect(0, 0, layer.width, layer.height);
    paint(lctx);
  }
  function empty() { return strokes.length === 0 && !base; }
  api.pixels = function () {
    // the model's input as the probe sends it: H×W bytes, grey, or RGB channels last (H×W×3) for a
    // 3-channel model. Over a loaded or picked image the strokes are combined at the input size: the
    // image's own bytes where nothing is drawn, so a stroke never resamples the rest of the image.
    var n = pad.width * pad.height;
    if (!base) { return toInput(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height); }
    if (strokes.length === 0) { return Uint8Array.from(base.px); }
    var cover = resize(plane(lctx.getImageData(0, 0, pad.width, pad.height).data, n, 3), pad.width, pad.height, W, H);
    var ink = M.ink === "light" ? 255 : 0, c = base.px.length / (H * W), out = new Uint8Array(base.px.length);
    for (var i = 0; i < base.px.length; i++) {
      var a = cover[Math.floor(i / c)] / 255;
      out[i] = Math.min(255, Math.max(0, Math.round(base.px[i] * (1 - a) + ink * a)));
    }
    return out;
  };
  api.canvasPixels = function () {
    // the canvas itself, grey (for measuring the resize against torch's)
    return Array.from(luma(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width * pad.height));
  };
  api.canvasSize = [pad.height, pad.width];

  // ---- live updates: one inference at a time, always on the latest drawing ----
  var busy = false, dirty = false, since = null, upAt = null;
  function changed(t) {
    if (since === null) { since = t; }
    if (busy) { dirty = true; return; }
    update();
  }
  function update() {
    var t0 = since, up = upAt; since = null; upAt = null; dirty = false;
    if (empty()) {
      document.getElementById("hint").textContent = "Empty canvas: draw a shape (" + M.ink + " ink on a " +
        (M.ink === "light" ? "dark" : "light") + " background), or load or pick an image.";
      document.getElementById("preds").textContent = "";
      document.getElementById("layers").textContent = "";
      document.getElementById("steps").textContent = "";
      document.body.setAttribute("data-empty", "1");
      api.updates++;
      return;
    }
    document.getElementById("hint").textContent = "";
    document.body.removeAttribute("data-empty");
    busy = true;
    var px = api.pixels();
    api.probe(px).then(function (r) {
      show(r, px);
      api.updates++;
      var now = performance.now();
      if (t0 !== null) { api.lastLatency = now - t0; api.latencies.push(api.lastLatency); }
      if (up !== null) { api.strokeLatencies.push(now - up); }
    }, function (e) { status.textContent = "probe failed: " + e; }).then(function () {
      busy = false;
      if (dirty) { update(); }
    });
  }

  function heat(map, grid, px) {
    // the unit's map over the drawing: the input in grey, the map stretched over it in red
    var c = el("canvas", "heat"), grey = greyOf(px);
    c.width = W; c.height = H;
    var g = c.getContext("2d"), img = g.createImageData(W, H);
    for (var i = 0; i < H * W; i++) { img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = grey[i] * 0.6; img.data[4 * i + 3] = 255; }
    g.putImageData(img, 0, 0);
    var m = el("canvas"); m.width = grid[1]; m.height = grid[0];
    var mg = m.getContext("2d"), mi = mg.createImageData(grid[1], grid[0]), hi = 0;
    for (var k = 0; k < map.length; k++) { hi = Math.max(hi, map[k]); }
    for (var j = 0; j < map.length; j++) {
      var v = hi > 0 ? Math.max(0, map[j]) / hi : 0;
      mi.data[4 * j] = 255; mi.data[4 * j + 1] = 60; mi.data[4 * j + 2] = 0; mi.data[4 * j + 3] = Math.round(220 * v);
    }
    mg.putImageData(mi, 0, 0);
    g.imageSmoothingEnabled = true;
    g.drawImage(m, 0, 0, W, H);
    return c;
  }

  function strip(r, px) {
    // the prediction as the drawing grows: each of the run's T frames, the class the model
    // predicts having read frames 1..t, and its probability
    var box = document.getElementById("steps");
    box.textContent = "";
    if (!SEQ) { return; }
    var fr = api.frames(px), n = H * W;
    box.appendChild(el("div", "note", M.step_probs ? "The prediction as the drawing grows (the model on frames 1…t of the run's " +
      SEQ.steps + "-step drawing, " + SEQ.transform + "):" : "The run's " + SEQ.steps + "-step drawing (" + SEQ.transform + "); " +
      "no prediction per step: see the note above."));
    var row = el("div", "probe-steps");
    for (var t = 0; t < SEQ.steps; t++) {
      var cell = el("div", "probe-step"), c = el("canvas", "step"), g, img, i;
      c.width = W; c.height = H; g = c.getContext("2d"); img = g.createImageData(W, H);
      for (i = 0; i < n; i++) { img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = fr[t * n + i]; img.data[4 * i + 3] = 255; }
      g.putImageData(img, 0, 0);
      cell.appendChild(c);
      if (r.steps) {
        var best = topUnits(r.steps[t], 1)[0];
        cell.appendChild(el("div", "step-class", label(best[0], r.steps[t].length)));
        // no decimals, unless it rounds to 0 or 100 it is not (0.996 is "99.6", not "100")
        cell.appendChild(el("div", "num", dom.percent(best[1], 0) + " %"));
      }
      row.appendChild(cell);
    }
    box.appendChild(row);
  }

  function label(i, n) {
    // an output's name: the run's class, or (a run mined with logits=False) the model's own
    // category when it names as many, else "output i": its outputs need not be the run's classes
    if (M.classes.length === n && M.classes[i] !== undefined) { return M.classes[i]; }
    return (M.outputs_are_classes === false ? "output " : "class ") + i;
  }
  function show(r, px) {
    strip(r, px);
    var order = topUnits(r.probs, Math.min(5, r.probs.length));
    var preds = document.getElementById("preds");
    preds.textContent = "";
    order.forEach(function (p) {
      // one decimal, more where it would read 100 or 0 and is not (0.9999542 is "99.995", its
      // runners-up "0.005"): a column, as numbers.percents writes one
      var row = el("tr");
      row.appendChild(el("td", null, label(p[0], r.probs.length)));
      var bar = el("td", "num");
      var b = el("span", "bar"); b.style.width = Math.round(p[1] * 120) + "px";
      bar.appendChild(b); bar.appendChild(document.createTextNode(" " + dom.percentFixed(p[1], 1) + " %"));
      row.appendChild(bar);
      preds.appendChild(row);
    });
    var box = document.getElementById("layers");
    box.textContent = "";
    M.layers.forEach(function (l) {
      var sec = el("div", "probe-layer");
      sec.appendChild(dom.line(el("h3"), [{ name: l.name }, " (" + l.units + " units)"]));  // the name isolated
      var row = el("div", "probe-units");
      // the layer's values as one column, as a unit card writes its values ("1.530" beside "-0.506")
      var shown = dom.column(r.layers[l.name].map(function (uv) { return uv[1]; }));
      r.layers[l.name].forEach(function (uv, k) {
        var card = el("div", "probe-unit");
        // an output layer's units are the classes (the run matched them): named as cards name them
        var lid = LINKS && LINKS.layers[l.name];
        var label = dom.line(el(lid ? "a" : "span", "unit-name"), ["unit " + uv[0]].concat(l.classes ? [" \u00b7 ", { name: l.classes[uv[0]] }] : []));
        if (lid) { label.href = "layers/" + lid + ".html#page=" + (Math.floor(uv[0] / LINKS.page_size) + 1) + "&unit=" + uv[0]; }
        card.appendChild(label);
        card.appendChild(el("div", "num", shown[k]));
        if (l.grid && lastMaps[l.name]) {
          var n = l.grid[0] * l.grid[1];
          card.appendChild(heat(lastMaps[l.name].subarray(uv[0] * n, (uv[0] + 1) * n), l.grid, px));
        }
        row.appendChild(card);
      });
      sec.appendChild(row);
      box.appendChild(sec);
    });
  }

  // ---- input: pointer events (mouse, pen, touch), undo, clear, images ----
  // undo takes back the last change of any kind (a stroke, a loaded or picked image, a clear)
  var note = document.getElementById("convert-note");
  function remember() { history.push({ strokes: strokes.slice(), base: base, note: note.textContent }); }
  function at(e) { var r = pad.getBoundingClientRect(); return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; }
  pad.addEventListener("pointerdown", function (e) {
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    remember();
    current = { w: parseFloat(width.value), pts: [at(e)] };
    strokes.push(current);
    redraw(); changed(e.timeStamp);
  });
  pad.addEventListener("pointermove", function (e) {
    if (!current) { return; }
    current.pts.push(at(e));
    redraw(); changed(e.timeStamp);
  });
  function end(e) { if (current) { current = null; upAt = e.timeStamp; changed(e.timeStamp); } }
  pad.addEventListener("pointerup", end);
  pad.addEventListener("pointercancel", end);
  document.getElementById("undo").addEventListener("click", function (e) {
    var last = history.pop();
    if (!last) { return; }
    strokes = last.strokes; base = last.base; note.textContent = last.note;
    redraw(); changed(e.timeStamp);
  });
  document.getElementById("clear").addEventListener("click", function (e) {
    if (empty()) { return; }
    remember();
    strokes = []; base = null; note.textContent = "";
    redraw(); changed(e.timeStamp);
  });
  function setBase(px, text) {
    // a loaded or picked image (its bytes at the input size) replaces the drawing; undo brings it back
    remember();
    base = { px: px, img: picture(px) };
    strokes = [];
    note.textContent = text;
    redraw(); changed(performance.now());
  }


  document.getElementById("file").addEventListener("change", function (e) {
    var f = e.target.files && e.target.files[0];
    if (!f) { return; }
    P.stored(f).then(function (im) {
      var n = im.w * im.h, d = im.data, colour = false;
      for (var i = 0; i < n && !colour; i++) { colour = d[4 * i] !== d[4 * i + 1] || d[4 * i] !== d[4 * i + 2]; }
      var how = C === 1 ? (colour ? " colour, made grey by luma (0.299 R + 0.587 G + 0.114 B)" : " grey")
        : (colour ? " colour (RGB)" : " grey, repeated to 3 channels");
      setBase(toInput(d, im.w, im.h), "Loaded " + dom.isolated(f.name) + ": " + im.w + "×" + im.h + how +
        ((im.w !== W || im.h !== H) ? ", resized to " + W + "×" + H + " by antialiased bilinear" : "") +
        (im.orientation ? ", " + im.orientation : "") + ", as the miner converts images.");
    }, function (err) {
      note.textContent = "Not loaded: " + (err && err.message ? err.message : err) + ".";
    }).then(function () { e.target.value = ""; });
  });
  function pick(im) {
    setBase(b64(im.pixels), "Dataset image " + im.index + (im.cls !== null ? " (" + dom.isolated(im.cls) + ")" : "") +
      ", at the model's input size, its exact pixels" + (C === 3 ? " (RGB)" : "") + ".");
  }
  // the gallery opens under its button; from the keyboard too: each image is a button (Tab reaches
  // it, Enter or Space picks it), Escape closes the gallery and gives the focus back to its button
  var gallery = document.getElementById("images"), opener = document.getElementById("pick");
  function open(shown) {
    gallery.hidden = !shown;
    opener.setAttribute("aria-expanded", String(shown));
  }
  opener.setAttribute("aria-controls", "images");
  opener.addEventListener("click", function () {
    if (!M.images.length) { gallery.textContent = M.images_note; }  // shown in the gallery's place: why there is none
    open(gallery.hidden);
  });
  gallery.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { open(false); opener.focus(); }
  });
  M.images.forEach(function (im) {
    var c = picture(b64(im.pixels), "thumb");
    c.title = dom.isolated(im.cls || "") + " #" + im.index;
    c.tabIndex = 0;
    c.setAttribute("role", "button");
    c.setAttribute("aria-label", "dataset image " + im.index + (im.cls !== null ? " (" + dom.isolated(im.cls) + ")" : ""));
    c.addEventListener("click", function () { pick(im); });
    c.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(im); }
    });
    gallery.appendChild(c);
  });
  open(false);

  // ---- start ----
  redraw();
  api.loadTimes = { scriptsLoaded: performance.now() };  // ms since navigation
  api.ready = new Promise(function (ok) {
    ort.env.wasm.numThreads = 1;
    ort.env.wasm.wasmPaths = { mjs: URL.createObjectURL(new Blob([window.sketchmineOrtMjs], { type: "text/javascript" })) };
    ort.env.wasm.wasmBinary = pieces("wasm");
    var graph = pieces("graph");
    api.loadTimes.decoded = performance.now();
    ok(ort.InferenceSession.create(graph, { executionProviders: ["wasm"], graphOptimizationLevel: "all" }));
  }).then(function (s) {
    session = s;
    api.loadTimes.session = performance.now();
    status.textContent = "model loaded (" + dom.isolated(M.model) + ", input " + H + "×" + W + ", onnxruntime-web " + M.ort + ", WebAssembly, one thread)";
    document.body.setAttribute("data-ready", "1");
    changed(performance.now());
    return api;
  }, function (e) { status.textContent = "the model could not be loaded: " + e; document.body.setAttribute("data-failed", "1"); throw e; });
}());
