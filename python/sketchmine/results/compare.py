"""Two runs over the same dataset side by side (say AlexNet vs VGG-19): accuracy, per-layer
top/bottom classes, and how much the preferred classes overlap."""
from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass, field

import pandas as pd

from sketchmine.errors import SketchmineError
from sketchmine.results.effects import logits_layer
from sketchmine.results.notebook import accuracy_text
from sketchmine.results.checks import check_count
from sketchmine.results.numbers import percent
from sketchmine.results.run import Run, open_run
from sketchmine.results.summaries import NO_LABELS, class_set, class_sides, no_classes


@dataclass(repr=False)
class Comparison:
    """accuracy: per class (accuracy_a, accuracy_b, difference; NaN for a run without
    predictions); layers: layer pairs (see `layer_pairs`; column paired_by "name", "output",
    "field" or "depth")
    with their top/bottom n classes, the classes tied at each list's cut and left out
    (tied_top_a, …: `summaries.cut_at`), whether all of a layer's classes tie (all_tied_a,
    all_tied_b) and the Jaccard overlaps; jaccard: top-n Jaccard for
    every (layer of a, layer of b). Each Jaccard is over the listed classes plus those tied at the
    cut (so it does not depend on class order) and NaN where a layer's classes all tie (it has no
    top or bottom classes to overlap)."""

    a: Run
    b: Run
    n: int
    accuracy: pd.DataFrame
    layers: pd.DataFrame
    jaccard: pd.DataFrame
    no_images: list[str] = field(default_factory=list)
    """Classes with no image in the runs, left out of every top and bottom list."""
    unmined: dict[str, list[str]] = field(default_factory=dict)
    """A partial run's ("a", "b") classes it has no image of yet, left out of its lists only (the
    other run lists them: they are not classes without images)."""

    @property
    def overall(self) -> tuple[float | None, float | None]:
        return self.a.accuracy(), self.b.accuracy()

    def __repr__(self) -> str:
        acc = [accuracy_text(run) for run in (self.a, self.b)]
        return (f"<sketchmine.Comparison A {str(self.a.path)!r} ({acc[0]}) vs B {str(self.b.path)!r} ({acc[1]}): "
                f"{len(self.layers)} layer pairs, top/bottom {self.n} classes>")

    def _repr_html_(self) -> str:
        """In a notebook, what `sketchmine compare` prints: the accuracy per class side by side
        and the paired layers' top and bottom classes with their overlaps (a dataclass dump of
        two runs and three tables showed none of them)."""
        esc = html.escape
        acc = self.accuracy.map(lambda v: percent(v, 2)).to_html(escape=True)
        cols = ["layer_a", "layer_b", "paired_by", "top_a", "top_b", "jaccard_top", "bottom_a", "bottom_b", "jaccard_bottom"]
        shown = self.layers[cols].copy() if len(self.layers) else pd.DataFrame(columns=cols)
        for key in ("top_a", "top_b", "bottom_a", "bottom_b"):
            shown[key] = [", ".join(map(str, v)) for v in shown[key]]
        notes = [f"classes without images, left out: {', '.join(self.no_images)}"] if self.no_images else []
        notes += [f"{side.upper()} is partial: no image yet of {', '.join(c)}" for side, c in self.unmined.items()]
        return (f"<div class='sketchmine-compare'><p>{esc(repr(self))}</p><p>accuracy per class (%)</p>{acc}"
                f"<p>layers paired, top and bottom {self.n} classes among the top-k images, Jaccard overlap</p>"
                f"{shown.to_html(index=False, escape=True, float_format=lambda v: f'{v:.2f}', na_rep='-')}"
                + "".join(f"<p>{esc(note)}</p>" for note in notes) + "</div>")


def jaccard(x: set | None, y: set | None) -> float:
    """|x ∩ y| / |x ∪ y| (NaN for two empty sets, or when either is None: no set to overlap)."""
    if x is None or y is None:
        return float("nan")
    return len(x & y) / len(x | y) if x | y else float("nan")


def depth_pairs(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    """Each layer of the shallower run with the layer of the other at the nearest relative
    depth (first layer with first, last with last)."""
    flip = len(a) > len(b)
    short, long_ = (b, a) if flip else (a, b)
    pairs = []
    for i, name in enumerate(short):
        rel = i / (len(short) - 1) if len(short) > 1 else 0.0
        other = long_[int(round(rel * (len(long_) - 1)))]
        pairs.append((other, name) if flip else (name, other))
    return pairs


def field_fractions(run: Run) -> dict[str, float]:
    """Each grid layer's receptive field as a share of the model's input (larger sides), where
    the run records the input's extent (the whole-image field of a layer without positions:
    a linear layer, the softmax); {} otherwise. A field may outgrow the input (ResNet's last
    blocks): shares above 1."""
    fields = {name: run.layer_attrs(name).get("receptive_field") for name in run.layers}
    whole = max((max(f["size"]) for f in fields.values() if f and list(f["stride"]) == [0, 0]), default=0)
    return {name: max(f["size"]) / whole for name, f in fields.items()
            if whole and f and list(f["stride"]) != [0, 0]}


def layer_pairs(a: list[str], b: list[str], outputs: tuple[str | None, str | None] = (None, None),
                fields: tuple[dict[str, float], dict[str, float]] = ({}, {})) -> list[tuple[str, str, str]]:
    """(layer of a, layer of b, "name" | "output" | "field" | "depth"): each layer of the run with
    fewer layers with the layer of the same name in the other when there is one (the same model
    mined twice, or a subset of its layers), the layers that compute each run's logits
    (`outputs`) with each other, and every other layer, between the pairs around it, with the
    layer whose receptive field takes the nearest share of the input (`fields`: each run's
    `field_fractions`, compared by ratio) where both have one, else with the layer at the
    nearest relative depth (`depth_pairs` when there is nothing else: two architectures).
    Pairing by depth alone put a 2-layer run's features.6 beside the other run's first conv
    layer (depth among the mined layers only), and SketchNet's logits beside a ResNet's conv
    layer (its `fc` left out); a run without its logits or softmax put its last hidden layer
    beside the other's softmax. Pairs keep the layers' order."""
    flip = len(a) > len(b)
    short, long_ = (b, a) if flip else (a, b)
    s_field, l_field = fields[::-1] if flip else fields
    fixed = {name: (name, "name") for name in short if name in long_}
    s_out, l_out = outputs[::-1] if flip else outputs
    # a run mined without its outputs (SketchNet's features.6 and classifier.4) ends at a hidden
    # layer: it ends where the other's hidden layers end, not at its logits or softmax
    hidden = long_.index(l_out) if l_out in long_ and s_out not in short and "softmax" not in short else len(long_)
    end = max(hidden, 1) - 1
    if s_out in short and l_out in long_ and s_out not in fixed and l_out not in {v for v, _ in fixed.values()}:
        fixed[s_out] = (l_out, "output")
    points: list[tuple[int, int]] = []  # (short, long) positions of the fixed pairs, both increasing
    for i, name in enumerate(short):
        if name in fixed and (j := long_.index(fixed[name][0])) > (points[-1][1] if points else -1):
            points.append((i, j))
    if not points or points[0][0] > 0:
        points.insert(0, (0, 0))
    if points[-1][0] < len(short) - 1:
        points.append((len(short) - 1, max(end, points[-1][1])))
    pairs, last = [], 0
    for i, name in enumerate(short):
        if name in fixed:
            pairs.append((name, *fixed[name]))
            last = long_.index(fixed[name][0])
            continue
        (s0, l0), (s1, l1) = next(((p, q) for p, q in zip(points, points[1:]) if p[0] <= i <= q[0]), (points[0],) * 2)
        j, how = max(last, int(round(l0 + (i - s0) / (s1 - s0) * (l1 - l0))) if s1 > s0 else l0), "depth"
        share = s_field.get(name)
        near = [q for q in range(max(l0, last), max(l1, last) + 1) if long_[q] in l_field] if share else []
        if share and near:
            j, how = min(near, key=lambda q: (abs(math.log(l_field[long_[q]] / share)), q)), "field"
        pairs.append((name, long_[j], how))
        last = j
    return [(o, s, how) for s, o, how in pairs] if flip else pairs


def check_same_classes(a: Run, b: Run) -> None:
    """Refuse two runs whose class names differ. The dataset fingerprint covers the images and
    their labels, not the names: the overlaps pair classes by label and the accuracy table by name,
    so differently named classes would read as a Jaccard of 1.00 beside lists with no name in common."""
    na, nb = a.class_names, b.class_names
    if na == nb:
        return

    def name(names: list[str], i: int) -> str:
        return repr(names[i]) if i < len(names) else "no class"

    differ = [i for i in range(max(len(na), len(nb))) if name(na, i) != name(nb, i)]
    shown = "; ".join(f"class {i}: {name(na, i)} in A, {name(nb, i)} in B" for i in differ[:3])
    if len(differ) > 3:
        shown += f"; and {len(differ) - 3} more"
    raise SketchmineError(f"runs {a.path} (A) and {b.path} (B) hold the same images and labels but name their classes "
                          f"differently ({shown}): compare pairs classes by label, and would show unlike names side by "
                          "side as the same classes; mine both with the same class names, in the same order")


def bottom_list(run: Run, layer: str, last: int) -> pd.DataFrame:
    """`run.bottom_classes(layer, last)`; for last 0 (a run whose classes all go to the top list,
    as a 1-class run's) the empty list, with the attributes that say which classes have no images."""
    listed = run.bottom_classes(layer, max(last, 1))
    if last:
        return listed
    none = listed.iloc[0:0].copy()
    none.attrs.update(listed.attrs)
    none.attrs.update(cut_count=None, tied_out=[], tied_out_labels=[])
    return none


def _as_run(r: Run | str | os.PathLike) -> Run:
    return r if isinstance(r, Run) else open_run(r)


def compare(run_a: Run | str | os.PathLike, run_b: Run | str | os.PathLike, n: int = 5) -> Comparison:
    """Compare two runs mined over the same dataset (same fingerprint), or refuse; each run read
    from one commit (another process may be mining either)."""
    n = check_count(n)  # before the runs' lists are cut to each run's own sides (class_sides)
    a, b = _as_run(run_a), _as_run(run_b)
    return a.store.committed(lambda: b.store.committed(lambda: _compare(a, b, n)))


def _compare(a: Run, b: Run, n: int) -> Comparison:
    fa, fb = a.attrs.get("dataset_fingerprint"), b.attrs.get("dataset_fingerprint")
    if fa != fb:
        kinds = [str((r.attrs.get("dataset") or {}).get("kind", "?")) for r in (a, b)]
        routes = "" if kinds[0] == kinds[1] else (
            f" (read as {kinds[0]} and as {kinds[1]}: an image folder is fingerprinted by its files, in-memory images "
            "by their pixels, so the same pictures read both ways differ: mine both from the same source)")
        raise SketchmineError(f"runs {a.path} and {b.path} were mined over different datasets (fingerprint "
                              f"{str(fa)[:12]}… vs {str(fb)[:12]}…){routes}; compare runs over the same images")
    for r in (a, b):  # every table compare makes is of classes
        if not r.has_labels():
            raise SketchmineError(f"compare reads the runs' classes (accuracy per class, each layer's top and bottom "
                                  f"classes), and run {r.path} has none: {no_classes(r, NO_LABELS)}")
    check_same_classes(a, b)
    acc_a, acc_b = a.class_accuracy_series(), b.class_accuracy_series()  # NaN: no predictions (--no-logits)
    accuracy = pd.DataFrame({"accuracy_a": acc_a, "accuracy_b": acc_b})
    accuracy["difference"] = accuracy["accuracy_b"] - accuracy["accuracy_a"]
    # each run's lists as `summary` takes them: n each, or each class once where fewer than 2n have images
    (first_a, last_a, _), (first_b, last_b, _) = class_sides(a, n), class_sides(b, n)
    top_a = {l: a.top_classes(l, max(first_a, 1)) for l in a.layers}
    top_b = {l: b.top_classes(l, max(first_b, 1)) for l in b.layers}
    rows: list[dict] = []
    empty: dict[str, set[int]] = {"a": set(), "b": set()}  # class positions: a name may repeat
    for la, lb, how in layer_pairs(a.layers, b.layers, (logits_layer(a), logits_layer(b)),
                                   (field_fractions(a), field_fractions(b))):
        frame_a, frame_b = bottom_list(a, la, last_a), bottom_list(b, lb, last_b)
        empty["a"].update(frame_a.attrs.get("no_images_at", []))
        empty["b"].update(frame_b.attrs.get("no_images_at", []))
        lists = {"top_a": top_a[la], "top_b": top_b[lb], "bottom_a": frame_a, "bottom_b": frame_b}
        rows.append({"layer_a": la, "layer_b": lb, "paired_by": how,
                     **{key: list(df.index) for key, df in lists.items()},
                     "jaccard_top": jaccard(class_set(top_a[la]), class_set(top_b[lb])),
                     "jaccard_bottom": jaccard(class_set(frame_a), class_set(frame_b)),
                     **{f"tied_{key}": list(df.attrs["tied_out"]) for key, df in lists.items()},
                     **{f"all_tied_{side}": bool(top.attrs["all_tied"]) for side, top in (("a", top_a[la]), ("b", top_b[lb]))}})
    matrix = pd.DataFrame([[jaccard(class_set(top_a[x]), class_set(top_b[y])) for y in b.layers] for x in a.layers],
                          index=pd.Index(a.layers, name="layer_a"), columns=pd.Index(b.layers, name="layer_b"))
    # a complete run knows the classes without images; a partial one may not have reached a class yet
    done = [empty[side] for side, run in (("a", a), ("b", b)) if run.complete]
    no_images = set.intersection(*done) if done else set()
    unmined = {side: [a.class_names[c] for c in sorted(empty[side] - no_images)]
               for side, run in (("a", a), ("b", b)) if not run.complete and empty[side] - no_images}
    return Comparison(a, b, n, accuracy, pd.DataFrame(rows), matrix, [a.class_names[c] for c in sorted(no_images)],
                      unmined)


