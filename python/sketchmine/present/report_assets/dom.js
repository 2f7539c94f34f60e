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
      var t = fixed(v, d);
      if (parseFloat(t) !== 0 && parseFloat(t) !== 100) { return t; }
    }
    return v > 50 ? "> 99.999999" : v > 0 ? "< 0.000001" : "> -0.000001";
  }

  // percent with `decimals` for an exact 0 or 100 too ("0.00" beside "1.00"), as numbers.percents
  // writes a column: a drop reads the same in the importance table and on a card
  function percentFixed(a, decimals) {
    var t = percent(a, decimals);
    return t === "0" || t === "100" ? fixed(a * 100, decimals) : t;
  }

  // A line of text and dataset names (class names, strings from the run): each name in a <bdi>,
  // isolated, so a name holding right-to-left text or a stray direction override (U+202E) is shown
  // as it is and cannot reverse the counts and names around it. parts: strings, or {name: text}.
  function line(node, parts) {
    parts.forEach(function (part) {
      node.appendChild(typeof part === "string" ? document.createTextNode(part) : el("bdi", null, balanced(part.name)));
    });
    return node;
  }

  // Plain text (a tooltip, an SVG title): a name holding right-to-left letters or direction
  // controls inside U+2068 … U+2069 (first-strong isolate), the isolates it leaves open closed, so
  // it cannot move the numbers beside it; any other name as it is (report_data.isolated).
  var TURNS = /[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefc\u200f\u202a-\u202e\u2066-\u2069]|\ud802[\udc00-\udfff]|\ud803[\udc00-\udfff]|\ud83a[\udc00-\udfff]|\ud83b[\udc00-\udfff]/;
  function isolated(name) {
    var text = String(name);
    return TURNS.test(text) ? "\u2068" + balanced(text) + "\u2069" : text;
  }
  // a name with the isolates it leaves open closed and those it closes without opening opened
  // (invisible controls), so an isolate around it ends where it ends (report_data.balanced)
  function balanced(name) {
    var text = String(name), depth = 0, stray = 0;
    for (var i = 0; i < text.length; i++) {
      var c = text.charAt(i);
      if (c === "\u2066" || c === "\u2067" || c === "\u2068") { depth++; }
      else if (c === "\u2069") { if (depth) { depth--; } else { stray++; } }
    }
    return "\u2068".repeat(stray) + text + "\u2069".repeat(depth);
  }
  // a path: each folder's name isolated, the whole left to right (report_data.isolated_path)
  function isolatedPath(path) {
    var text = String(path);
    return TURNS.test(text) ? "\u2066" + text.split("/").map(isolated).join("/") + "\u2069" : text;
  }

  // a command as code, each word left to right in an isolate of its own (report.css: code .w), so a
  // layer name in Hebrew or with a stray U+202E cannot move the unit number or options after it
  // (report_data.code_html: quotes kept, spaces between)
  function code(line) {
    if (!TURNS.test(line)) { return el("code", null, line); }  // nothing to isolate: one plain <code>
    var node = el("code"), word = "", quote = "";
    function put() { if (word) { node.appendChild(el("span", "w", word)); word = ""; } }
    for (var i = 0; i < line.length; i++) {
      var c = line.charAt(i);
      if (c === " " && !quote) { put(); node.appendChild(document.createTextNode(c)); continue; }
      if ((c === "'" || c === '"') && (quote === "" || quote === c)) { quote = quote ? "" : c; }
      word += c;
    }
    put();
    return node;
  }

  // a note's text with each `command` set as code (the notes name the commands that add what is missing)
  function withCode(node, text) {
    String(text).split("`").forEach(function (part, i) {
      if (part) { node.appendChild(i % 2 ? code(part) : document.createTextNode(part)); }
    });
    return node;
  }

  // a probability's change in percentage points, 4 decimals wherever it is shown (numbers.points):
  // one unit's probability drop reads the same in its card, its dashboard and the layer's table
  function points(change, sign) {
    var t = percentFixed(change, 4);
    return sign && /^\d/.test(t) && change > 0 ? "+" + t : t;
  }

  // x with d decimals as Python's format(x, ".<d>f") writes it: exact binary ties rounded half to
  // even (toFixed rounds them away from zero), and never "-0.000".
  function fixed(x, d) {
    var s = Math.abs(x).toFixed(100), dot = s.indexOf(".");
    var tie = s.charAt(dot + d + 1) === "5" && /^0*$/.test(s.slice(dot + d + 2));
    var last = Number(s.charAt(d ? dot + d : dot - 1));  // a tie after an even digit: cut, not rounded up
    var t = tie && last % 2 === 0 ? (x < 0 ? "-" : "") + s.slice(0, d ? dot + d + 1 : dot) : x.toFixed(d);
    return Number(t) === 0 ? t.replace(/^-/, "") : t;
  }

  // The numbers of one column (a table column, a card's values and its header's max) with one
  // count of decimals, enough for p significant digits of the largest magnitude: "1.780" beside
  // "1.719", never "1.78", and one value reads the same wherever the column shows it. A nonzero
  // value the decimals round to zero keeps one significant digit ("-0.0004", as numbers.number
  // writes it). Magnitudes below 1e-4 (or past 1e21) are written as fmt writes them (Python's g).
  function column(values, p) {
    p = p || 4;
    var xs = values.map(num), big = 0;
    for (var i = 0; i < xs.length; i++) {
      if (xs[i] !== null && isFinite(xs[i])) { big = Math.max(big, Math.abs(xs[i])); }
    }
    if (!(big >= 1e-4 && big < 1e21)) { return values.map(function (v) { return fmt(v, p); }); }
    var e = Number(big.toExponential(p - 1).split("e")[1]), d = Math.max(0, p - 1 - e);
    // more decimals (up to 7 significant digits of the largest) while a value would read as a whole
    // number it is not: nine GRU maxima of 0.9999987 and below are not "1.000", a tie they are not
    function whole(x) { var t = fixed(x, d); return Number(t) !== x && Number(t) !== 0 && Number(t) % 1 === 0; }
    while (d < Math.max(0, 6 - e) && xs.some(function (x) { return x !== null && isFinite(x) && whole(x); })) { d++; }
    return xs.map(function (x) {
      if (x === null || !isFinite(x)) { return fmt(x); }
      var t = fixed(x, d);
      return Number(t) === 0 && x !== 0 ? gformat(x, 1) : t;
    });
  }

  // The fewest significant digits, from p, that write no two different values alike: the
  // edges of neighbouring bins stay apart (1 … 1.125, 1.125 … 1.25) however close they lie.
  function enough(values, p) {
    for (var q = p || 4; q < 17; q++) {
      var seen = {}, apart = true;
      for (var i = 0; i < values.length && apart; i++) {
        var x = num(values[i]);
        if (x === null || !isFinite(x)) { continue; }
        var t = fmt(x, q);
        apart = !Object.prototype.hasOwnProperty.call(seen, t) || seen[t] === x;
        seen[t] = x;
      }
      if (apart) { return q; }
    }
    return 17;
  }

  // "78 of 86", or where units share the drop "78 of 86 (tied with 8 units)" (importance_store.rank_text)
  function rankText(rank, tied, units) {
    var others = (tied || 1) - 1;
    return rank + (units === undefined ? "" : " of " + units) +
      (others ? " (tied with " + others + " unit" + (others > 1 ? "s" : "") + ")" : "");
  }

  // "6 of 9 tied at -0.3070: ..." where the last entry of a full top-k shares its value with
  // others: the top-k ranks equal values in dataset order, so where images past the k-th share it
  // too, that order picks which fill those places and so which classes are counted (the top-k
  // cannot tell whether any do); null otherwise. values: the entries' as the data give them;
  // last: the last one as its column writes it; k: the run's k.
  function topTies(values, last, k) {
    var n = values.length, x = n ? num(values[n - 1]) : null, tied = 0;
    if (n !== k || x === null) { return null; }
    for (var i = 0; i < n; i++) { if (num(values[i]) === x) { tied++; } }
    return tied < 2 ? null : tied + " of " + n + " tied at " + last + ": equal values rank in dataset order, so where more " +
      "images share the value, that order, not the unit, picks which fill these places (and the classes counted)";
  }

  window.sketchmineDom = { el: el, svgEl: svgEl, tile: tile, num: num, fmt: fmt, percent: percent, percentFixed: percentFixed, points: points,
                           withCode: withCode, code: code, isolated: isolated, isolatedPath: isolatedPath, line: line, column: column, enough: enough, rankText: rankText, topTies: topTies };
})();
