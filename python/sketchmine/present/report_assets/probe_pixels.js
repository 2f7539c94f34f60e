// sketchmine live probe: the pixel work of the page (probe.js), in plain functions of the model's
// input size H×W: the miner's resize, the progressive frames of a sequence run, and a loaded file's
// pixels as the miner reads them. Kept apart so probe.js holds the page and the inference.
window.sketchmineProbePixels = function (H, W) {
  "use strict";
  // ---- the miner's resize: torch.nn.functional.interpolate(mode="bilinear", antialias=True) ----
  function aaTaps(inSize, outSize) {
    var scale = inSize / outSize, support = scale >= 1 ? scale : 1, inv = scale >= 1 ? 1 / scale : 1, taps = [];
    for (var i = 0; i < outSize; i++) {
      var center = scale * (i + 0.5);
      var lo = Math.max(Math.trunc(center - support + 0.5), 0), hi = Math.min(Math.trunc(center + support + 0.5), inSize);
      var w = [], total = 0;
      for (var j = lo; j < hi; j++) { var x = Math.abs((j - center + 0.5) * inv); var v = x < 1 ? 1 - x : 0; w.push(v); total += v; }
      for (var k = 0; k < w.length; k++) { w[k] = total > 0 ? w[k] / total : 0; }
      taps.push({ lo: lo, w: w });
    }
    return taps;
  }
  function resize(grey, w, h, ow, oh) {
    // grey: Float32Array h*w (0-255) → Float64Array oh*ow; separable, width first
    if (w === ow && h === oh) { return Float64Array.from(grey); }
    var tx = aaTaps(w, ow), ty = aaTaps(h, oh), mid = new Float64Array(h * ow), out = new Float64Array(oh * ow);
    for (var y = 0; y < h; y++) {
      for (var x = 0; x < ow; x++) { var t = tx[x], s = 0; for (var k = 0; k < t.w.length; k++) { s += t.w[k] * grey[y * w + t.lo + k]; } mid[y * ow + x] = s; }
    }
    for (var yy = 0; yy < oh; yy++) {
      var u = ty[yy];
      for (var xx = 0; xx < ow; xx++) { var s2 = 0; for (var k2 = 0; k2 < u.w.length; k2++) { s2 += u.w[k2] * mid[(u.lo + k2) * ow + xx]; } out[yy * ow + xx] = s2; }
    }
    return out;
  }
  function toBytes(values) {
    var px = new Uint8Array(values.length);
    for (var i = 0; i < values.length; i++) { px[i] = Math.min(255, Math.max(0, Math.round(values[i]))); }
    return px;
  }
  function luma(data, n) {
    // RGBA bytes → grey floats, the miner's LUMA (alpha dropped, as the miner does)
    var g = new Float32Array(n);
    for (var i = 0; i < n; i++) { g[i] = 0.299 * data[4 * i] + 0.587 * data[4 * i + 1] + 0.114 * data[4 * i + 2]; }
    return g;
  }
  function plane(data, n, c) {
    // RGBA bytes → one colour plane as floats
    var g = new Float32Array(n);
    for (var i = 0; i < n; i++) { g[i] = data[4 * i + c]; }
    return g;
  }

  // ---- sequence runs: the drawing as the run's progressive frames (data/sequences.py) ----
  // A port of progressive_drawing ("outline-then-fill/v1") on the H×W grey bytes: foreground =
  // pixels unlike the background; outline (erosion depth 0) first, clockwise from 12 o'clock around
  // the centroid (angle and radius rounded to 1e-6 as numpy's round does), then the fill inward.
  function rint(v) { var f = Math.floor(v), d = v - f; return d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1); }
  function round6(v) { return rint(v * 1e6) / 1e6; }
  function backgroundOf(px, ink) {
    if (ink !== "auto") { return ink === "light" ? 0 : 255; }
    var b = [], x, y;
    for (x = 0; x < W; x++) { b.push(px[x]); }
    for (x = 0; x < W; x++) { b.push(px[(H - 1) * W + x]); }
    for (y = 1; y < H - 1; y++) { b.push(px[y * W]); b.push(px[y * W + W - 1]); }
    b.sort(function (a, c) { return a - c; });
    // the lower median, as background_of and ink density take it (not the mean of an even border's two middle values)
    return b[(b.length - 1) >> 1] < 128 ? 0 : 255;
  }
  function pixelOrder(px, bg) {
    var n = H * W, depth = new Int32Array(n).fill(-1), alive = new Uint8Array(n), any = false, i;
    for (i = 0; i < n; i++) { alive[i] = px[i] !== bg ? 1 : 0; any = any || alive[i] === 1; }
    if (!any) { return { order: [], outline: 0 }; }
    var fg = Uint8Array.from(alive), d = 0, left = true;
    while (left) {
      var inner = new Uint8Array(n);
      left = false;
      for (var y = 0; y < H; y++) {
        for (var x = 0; x < W; x++) {
          var k = y * W + x;
          if (!alive[k]) { continue; }
          inner[k] = (y > 0 && alive[k - W] && y < H - 1 && alive[k + W] && x > 0 && alive[k - 1] && x < W - 1 && alive[k + 1]) ? 1 : 0;
          if (!inner[k]) { depth[k] = d; } else { left = true; }
        }
      }
      alive = inner; d++;
    }
    var ys = [], xs = [], sy = 0, sx = 0;
    for (i = 0; i < n; i++) { if (fg[i]) { ys.push(Math.floor(i / W)); xs.push(i % W); sy += Math.floor(i / W); sx += i % W; } }
    var cy = sy / ys.length, cx = sx / xs.length, TWO_PI = 2 * Math.PI, items = [], outline = 0;
    for (i = 0; i < ys.length; i++) {
      var a = Math.atan2(xs[i] - cx, -(ys[i] - cy)) % TWO_PI;
      if (a < 0) { a += TWO_PI; }
      var k2 = ys[i] * W + xs[i];
      items.push([depth[k2], round6(a), round6(Math.hypot(ys[i] - cy, xs[i] - cx)), k2]);
      if (depth[k2] === 0) { outline++; }
    }
    items.sort(function (p, q) { return p[0] - q[0] || p[1] - q[1] || p[2] - q[2] || p[3] - q[3]; });
    return { order: items.map(function (it) { return it[3]; }), outline: outline };
  }
  function frames(px, SEQ) {
    // the run's T frames of the drawing px (H×W grey bytes): T*H*W bytes, the last one px itself
    var T = SEQ.steps, n = H * W, bg = backgroundOf(px, SEQ.ink), po = pixelOrder(px, bg);
    var fill = po.order.length - po.outline, tOut = T > 1 ? Math.ceil(T / 2) : 0, out = new Uint8Array(T * n).fill(bg);
    for (var t = 1; t <= T; t++) {
      var shown = t <= tOut ? rint(t / tOut * po.outline) : po.outline + rint((t - tOut) / (T - tOut) * fill);
      for (var j = 0; j < shown; j++) { out[(t - 1) * n + po.order[j]] = px[po.order[j]]; }
    }
    out.set(px, (T - 1) * n);
    return out;
  }

  var TURN = { 0: "", 90: "rotated 90°", 180: "rotated 180°", 270: "rotated 270°" };
  function stored(f) {
    // the file's pixels as stored, RGBA, as PIL reads them for the miner: no EXIF rotation (the
    // browser applies it when decoding: read it with ImageDecoder and draw the bitmap back), no
    // colour management; refused when transparent (the browser premultiplies alpha, losing the
    // colour under it, which the miner keeps: it drops alpha)
    return Promise.all([createImageBitmap(f, { colorSpaceConversion: "none", premultiplyAlpha: "none" }), f.arrayBuffer()]).then(function (got) {
      var bmp = got[0], o = { rotation: 0, flip: false, known: false, w: bmp.width, h: bmp.height };
      var dec = typeof ImageDecoder === "function" && f.type ? ImageDecoder.isTypeSupported(f.type).then(function (ok) {
        if (!ok) { return null; }
        var d = new ImageDecoder({ data: got[1], type: f.type });
        return d.decode().then(function (r) {
          var v = r.image;
          o = { rotation: v.rotation || 0, flip: !!v.flip, known: true, w: v.codedWidth, h: v.codedHeight };
          v.close(); d.close();
        });
      }).catch(function () { return null; }) : Promise.resolve(null);
      return dec.then(function () {
        var c = document.createElement("canvas"); c.width = o.w; c.height = o.h;
        var g = c.getContext("2d", { willReadFrequently: true });
        g.imageSmoothingEnabled = false;
        g.translate(o.w / 2, o.h / 2); g.rotate(-o.rotation * Math.PI / 180); if (o.flip) { g.scale(-1, 1); }
        g.drawImage(bmp, -bmp.width / 2, -bmp.height / 2);
        var d = g.getImageData(0, 0, o.w, o.h).data;
        for (var i = 3; i < d.length; i += 4) {
          if (d[i] !== 255) {
            throw new Error(f.name + " has transparent pixels: the miner drops the alpha channel and keeps the colour " +
              "stored under it, which the browser does not give this page; save the image without transparency (flattened) " +
              "and load it again");
          }
        }
        var turned = (o.rotation ? TURN[o.rotation] || "rotated " + o.rotation + "°" : "") +
          (o.flip ? (o.rotation ? ", " : "") + "mirrored" : "");  // no rotation, no flip: nothing to say
        return { data: d, w: o.w, h: o.h, orientation: !o.known ? "its EXIF orientation could not be read here (the browser may show it rotated)"
          : turned ? "its EXIF orientation (" + turned + ") not applied (the stored pixels)" : "" };
      });
    });
  }

  return { resize: resize, toBytes: toBytes, luma: luma, plane: plane, frames: frames, stored: stored };
};
