"""How numbers are written for people: one rule for percentages everywhere (console, notebook,
report, slides), so no view calls 1,999 of 2,000 "100%"."""
from __future__ import annotations

import math
from collections.abc import Sequence

from sketchmine.errors import whole_number


def percent(a: float | None, decimals: int = 1) -> str:
    """A fraction as a percentage without the number sign ("99.95"): 100 or 0 only when exact;
    a fraction that rounds to either gets more decimals (up to 6, then "> 99.999999" /
    "< 0.000001"), so 1999 of 2000 never reads as all. A change (an accuracy drop) keeps its sign
    the same way: one image in 50,000 is "-0.002", not "-0.00". "-" for None or NaN."""
    decimals = whole_number(decimals, "decimals", low=0)
    if a is None or math.isnan(a):
        return "-"
    v = float(a) * 100
    if v in (0.0, 100.0):
        return "0" if v == 0 else "100"
    for d in range(decimals, 7):
        text = f"{v:.{d}f}"
        if float(text) not in (0.0, 100.0):
            return text
    return "> 99.999999" if v > 50 else "< 0.000001" if v > 0 else "> -0.000001"


def rate(a: float | None, decimals: int = 2) -> str:
    """A fraction as a percentage with its sign, set apart as every view sets it ("98.50 %", not
    "98.50%"); "-" for None or NaN."""
    text = percent(a, decimals)
    return text if text == "-" else f"{text} %"


def percents(values: Sequence[float | None], decimals: int = 2) -> list[str]:
    """The percentages of one table column with one count of decimals: an exact 0 or 100 too
    ("0.00" beside "1.00", where `percent` alone writes "0": a column of accuracy drops mixed the
    two). As `column` keeps one significant digit, a nonzero value that `decimals` would round to
    0 or 100 keeps the decimals `percent` gives it; "-" for None or NaN."""
    texts = [percent(v, decimals) for v in values]
    return [f"{float(v or 0) * 100 + 0.0:.{decimals}f}" if t in ("0", "100") else t for v, t in zip(values, texts)]


def points(change: float | None, sign: bool = False) -> str:
    """A change of a probability in percentage points, as the accuracy's beside it (0.005684 is
    "0.5684"): 4 decimals (a millionth of a probability) wherever it is shown, exact zero too
    ("0.0000", as `percents` writes a column), so one unit's probability drop reads the same in a
    table, a card and its dashboard; the extra decimals as `percent` writes them. `sign`: "+"
    before a rise (a unit's effect on a class), not before `percent`'s "< 0.000001"."""
    text = percents([change], 4)[0]
    return "+" + text if sign and text[0].isdigit() and change is not None and change > 0 else text


def number(v: float | None, spec: str = ".3f") -> str:
    """A statistic as text with `spec`; "-" for None or NaN (a correlation over one class or where
    every class ties, the ink density of a class with no image mined yet), as `percent` writes
    them, never "nan". Console and report both write statistics through it. A value that a fixed
    spec rounds to zero keeps one significant digit ("-0.001", not "-0.00"), as `percent` does; -0.0
    is "0.000"."""
    if v is None or math.isnan(float(v)):
        return "-"
    v = float(v) + 0.0  # a negative zero is zero: "0.000", not "-0.000"
    text = format(v, spec)
    if spec.endswith("f") and v != 0 and float(text) == 0:
        text = format(v, spec.rpartition(".")[0] + ".1g")
    return text


def column(values: Sequence[float | str | None], digits: int = 4) -> list[str]:
    """The numbers of one table column with one count of decimals, enough for `digits` significant
    digits of the largest magnitude ("1.780" beside "1.719", not "1.78"), as the report's pages write
    a column (dom.js `column`); a nonzero value that rounds to zero keeps one significant digit, as
    `number` writes it; magnitudes outside [1e-4, 1e21) in `g` form; "-" for NaN or None (the
    summaries' "no value"); "inf" / "-inf" as numbers or as the summaries' strings, as dom.js
    `num` reads them."""
    xs = [math.nan if v is None else float(v) for v in values]
    finite = [x for x in xs if math.isfinite(x)]
    big = max(map(abs, finite), default=0.0)
    if not 1e-4 <= big < 1e21:
        return ["-" if math.isnan(x) else format(x + 0.0, f".{digits}g") for x in xs]
    exponent = int(f"{big:.{digits - 1}e}".split("e")[1])
    decimals = max(0, digits - 1 - exponent)

    def whole(x: float) -> bool:  # reads as a whole number it is not (0.9999987 as "1.000")
        text = float(f"{x:.{decimals}f}")
        return text != x and text != 0 and text.is_integer()

    while decimals < max(0, 6 - exponent) and any(map(whole, finite)):
        decimals += 1
    return [str(x) if math.isinf(x) else number(x, f".{decimals}f") for x in xs]


def significant(v: float, spec: str = ".3g") -> str:
    """`v` with a `g` spec, given more digits (up to 7) where it would read as a whole number it is
    not: a probability of 0.99986 is not "1", 99.96 not "100" (below 1,000: larger values are
    whole numbers to `spec`'s digits in any case)."""
    text = format(float(v), spec)
    digits = int(spec.rpartition(".")[2].rstrip("g") or 6)
    while abs(v) < 1000 and float(text) != float(v) and float(text).is_integer() and digits < 7:
        digits += 1
        text = format(float(v), f"{spec.rpartition('.')[0]}.{digits}g")
    return text


def enough(values: Sequence[float | None], digits: int = 4) -> int:
    """The fewest significant digits, from `digits`, that write no two different values alike
    with a `g` spec: neighbouring bins' edges stay apart (1 … 1.125, 1.125 … 1.25) however close
    they lie, in `sketchmine unit` as on the dashboard (dom.js `enough`)."""
    xs = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    for q in range(digits, 17):
        seen: dict[str, float] = {}
        if all(seen.setdefault(format(x, f".{q}g"), x) == x for x in xs):
            return q
    return 17


def shape_text(attrs: dict) -> str:
    """A layer's output shape for people, from its attributes: "32×28×28"; a layer over time says
    its steps ("16×28×28 × 8 steps", not the (C, T·H, W) map it is stored as, "16×224×28"; a 1-D frame's
    (C, T·L) likewise: "4×97 × 6 steps")."""
    shape = [int(s) for s in attrs.get("shape") or []]
    steps = attrs.get("time_steps")
    frame = [int(s) for s in attrs.get("frame") or []]
    if attrs.get("position") == "time-stacked" and isinstance(steps, int) and frame and len(shape) == 1 + len(frame):
        return f"{'×'.join(map(str, [shape[0], *frame]))} × {steps} steps"
    if attrs.get("position") in ("time-stacked", "time", "sequence") and len(shape) == 2:
        return f"{shape[0]} × {shape[1]} steps"
    return "×".join(map(str, shape))
