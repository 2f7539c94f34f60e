"""Held image maxima (stats/held.py): the statistics that take their maxima in blocks of images
end in the same state as when given every batch at once, whatever the block, and what they
report (state, results, merge) always includes every image given."""
from __future__ import annotations

import numpy as np
import torch

from sketchmine.stats import examples, histogram, moments, sketch
from sketchmine.stats.accumulators import Batch, LayerSpec, Setup
from sketchmine.stats.held import MAX_ELEMENTS, MAX_ROWS, HeldMaxima

LAYERS = (LayerSpec("a", 5, (3, 3)), LayerSpec("b", 7))
FACTORIES = (histogram.accumulator, sketch.accumulator, examples.accumulator, moments.accumulator)


def batches(seed: int = 0, sizes=(3, 1, 8, 2, 5, 4, 6)):
    g = torch.Generator().manual_seed(seed)
    start = 0
    for n in sizes:
        scale = 10.0 ** torch.randint(-3, 4, (1,), generator=g).item()  # the grids widen as batches come
        maxima = {l.name: torch.randn(n, l.channels, generator=g) * scale for l in LAYERS}
        maxima["a"][0, 1] = float("nan")
        ids = torch.arange(start, start + n) * 7 + 3
        start += n
        yield Batch(ids, torch.full((n,), -1), torch.zeros(n, 1, 1, 1), maxima=maxima)


def fed(rows: int | None, restore_after: int | None = None, shared: bool = True) -> list:
    setup = Setup(LAYERS, 3, torch.device("cpu"), distributions=True)
    accs = [f(setup) for f in FACTORIES]
    for acc in accs:  # shared=False: each concatenates its own blocks
        acc._held = HeldMaxima(12, acc._held._sink, rows, acc._held._with_index, setup.blocks if shared else None)
    for j, batch in enumerate(batches()):
        if j == restore_after:  # a resume: a fresh object restored from the state taken mid-hold
            fresh = [f(setup) for f in FACTORIES]
            for old, new in zip(accs, fresh):
                new.restore(old.state())
            accs = fresh
        for acc in accs:
            for layer in LAYERS:
                acc.update(layer.name, torch.empty(0), batch)
    return accs


def same(a: list, b: list) -> None:
    for x, y in zip(a, b):
        sx, sy = x.state(), y.state()
        for key in sx:
            np.testing.assert_array_equal(sx[key], sy[key], err_msg=f"{x.key}/{key}")
        rx, ry = x.results(), y.results()
        for key in rx:
            np.testing.assert_array_equal(rx[key], ry[key], err_msg=key)


def test_any_block_of_images_gives_the_same_state():
    every_batch = fed(1)
    for rows in (2, 5, 16, 29, 512):
        same(fed(rows), every_batch)
        same(fed(rows, shared=False), every_batch)


def test_statistics_of_one_pass_concatenate_a_held_block_once(monkeypatch):
    """The four holding statistics release the same batches at the same rows: one concatenation
    of maxima (and one of image indices, for the examples) per layer and release, not four."""
    made = []
    cat = torch.cat
    monkeypatch.setattr(torch, "cat", lambda parts, *a, **k: made.append(len(parts)) or cat(parts, *a, **k))
    fed(16)
    shared = len(made)
    made.clear()
    fed(16, shared=False)
    # one release (16 of the 29 rows, in 5 batches) of 2 layers: per layer, shared, one maxima and
    # one index concatenation; unshared, each of the 4 statistics' maxima and the examples' index
    assert (shared, len(made)) == (2 * 2, 2 * 5)


def test_state_taken_mid_hold_includes_every_image():
    same(fed(16, restore_after=3), fed(1))


def test_merge_releases_both_sides():
    left, right = fed(64), fed(64)
    whole = fed(1)
    for acc, other in zip(left, right):
        acc.merge(other)
    doubled = fed(1)
    for acc, other in zip(doubled, whole):
        acc.merge(other)
    same(left, doubled)


def test_a_deep_copy_holds_for_itself():
    """The distributed merge deep-copies accumulators: the copy's held rows go to the copy."""
    import copy

    for held_first in fed(64):
        twin = copy.deepcopy(held_first)
        before = held_first.state()  # releases the original's rows into the original only
        after_twin = twin.state()
        for key in before:
            np.testing.assert_array_equal(before[key], after_twin[key], err_msg=key)
        np.testing.assert_array_equal(held_first.state()[next(iter(before))], before[next(iter(before))])


def test_rows_held_are_bounded_by_elements():
    assert HeldMaxima(10, print).rows == MAX_ROWS
    assert HeldMaxima(MAX_ELEMENTS // 100, print).rows == 100
    assert HeldMaxima(10 * MAX_ELEMENTS, print).rows == 1
