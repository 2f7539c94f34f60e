// sketchmine report: the DOM helpers report.js and unit.js share (loaded before either).
// Every string goes in through textContent or setAttribute, never as HTML.
(function () {
  "use strict";
  var SVG = "http://www.w3.org/2000/svg";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }

  function svgEl(tag, attrs, text) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) { if (Object.prototype.hasOwnProperty.call(attrs, k)) { e.setAttribute(k, String(attrs[k])); } }
    if (text !== undefined) { e.textContent = String(text); }
    return e;
  }

  function tile(src, i, w, h) {
    // tile i of a horizontal strip of w x h tiles, shown 64 px high
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

  // Values arrive as JSON numbers, null (NaN: none) or "inf" / "-inf" (JSON has no infinity;
  // a unit that overflowed really reached it, so it is shown, never as "-").
  function num(v) {
    if (v === "inf") { return Infinity; }
    if (v === "-inf") { return -Infinity; }
    return v === null || v === undefined ? null : Number(v);
  }
  function fmt(v, p) {
    var x = num(v);
    if (x === null || isNaN(x)) { return "-"; }
    if (!isFinite(x)) { return x > 0 ? "inf" : "-inf"; }
    return gformat(x, p || 4);
  }

  // Python's format(x, ".<p>g"), so a number reads the same here as in `sketchmine unit`: the
  // binary value's exact ties rounded half to even (toPrecision rounds them up: quantiles are
  // exact binary values and often tie, 4.5625 -> "4.562" there), trailing zeros dropped, the
  // exponent form below 1e-4 and from 10^p, with two exponent digits ("1.5e-05").
  function gformat(x, p) {
    if (x === 0) { return "0"; }
    var digits = Math.abs(x).toPrecision(100).replace(/e.*$/, "").replace(".", "").replace(/^0+/, "");
    var tie = digits.charAt(p) === "5" && /^0*$/.test(digits.slice(p + 1));
    var y = tie && Number(digits.charAt(p - 1)) % 2 === 0 ? x * (1 - 1e-12) : x;  // an even digit: toward zero
    var parts = y.toExponential(p - 1).split("e"), exp = Number(parts[1]);
    var trim = function (t) { return t.indexOf(".") >= 0 ? t.replace(/\.?0+$/, "") : t; };
    if (exp < -4 || exp >= p) {
      var a = Math.abs(exp);
      return trim(parts[0]) + "e" + (exp < 0 ? "-" : "+") + (a < 10 ? "0" : "") + a;
    }
    return trim(y.toFixed(Math.max(0, p - 1 - exp)));
  }

  // a fraction as a percentage: 100 or 0 only when exact (1999 of 2000 is "99.95", not "100.00");
  // a change keeps its sign the same way (one image in 50,000 is "-0.002", not "-0.00")
  function percent(a, decimals) {
    if (a === null || a === undefined || isNaN(a)) { return "-"; }
    var v = a * 100;
    if (v === 0 || v === 100) { return String(v); }
    for (var d = decimals === undefined ? 2 : decimals; d <= 6; d++) {
      var t = v.toFixed(d);
      if (parseFloat(t) !== 0 && parseFloat(t) !== 100) { return t; }
    }
    return v > 50 ? "> 99.999999" : v > 0 ? "< 0.000001" : "> -0.000001";
  }

  window.sketchmineDom = { el: el, svgEl: svgEl, tile: tile, num: num, fmt: fmt, percent: percent };
})();
