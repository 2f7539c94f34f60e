"""Units whose objective gives the input no gradient at any step (read after a ReLU that is
0 where the objective reads it, from the start image on): the optimisation never moves them,
so their "optimised" image is the starting noise. The API marks them and the stored pass says so."""
from __future__ import annotations

import logging

import numpy as np
import torch

import sketchmine
from sketchmine.passes.featvis import feature_visualization
from sketchmine.passes.visualize import visualize
from tests.test_report import _open, browser  # noqa: F401  (the Chromium fixture)


def test_units_without_gradient_are_marked(demo_model):
    units = list(range(8))
    r = feature_visualization(demo_model, "features.7", units, steps=4)  # SketchNet's ReLU after features.6
    start = feature_visualization(demo_model, "features.7", units, steps=1)
    flat = np.flatnonzero(r.no_gradient)
    assert 0 < len(flat) < len(units)
    for u in range(len(units)):  # marked exactly where the image never left the starting noise
        assert torch.equal(r.images[u], start.images[u]) == bool(r.no_gradient[u]), u
    conv = feature_visualization(demo_model, "features.6", units, steps=4)  # the conv before it: all move
    assert not conv.no_gradient.any()


def test_the_stored_pass_says_which_units_were_not_optimised(small_test_set, tmp_path, caplog):
    run = sketchmine.mine("demo", small_test_set, layers=["features.7"], k=1, out=tmp_path / "r.zarr")
    with caplog.at_level(logging.WARNING, logger="sketchmine"):
        visualize(run, data=small_test_set, batch_size=48, optimize=True, optimize_steps=2, max_units=8)
    want = feature_visualization("demo", "features.7", list(range(48)), steps=2).no_gradient[:8]
    notes = [r.getMessage() for r in caplog.records if "no gradient" in r.getMessage()]
    assert want.any() and len(notes) == 1, notes
    assert f"units {', '.join(str(u) for u in np.flatnonzero(want))} " in notes[0]
    assert "starting noise" in notes[0]



def test_the_stored_mark_reaches_the_slide_and_the_report(small_test_set, tmp_path, browser):  # noqa: F811
    """optimized_stopped holds NO_GRADIENT for those units (-1 for the others), and the slide and
    the report's card (in Chromium) say so instead of showing the noise as an optimised input."""
    from sketchmine.present.montage import slide_content
    from sketchmine.present.report import write_report
    from sketchmine.store import schema

    run = sketchmine.mine("demo", small_test_set, layers=["features.7"], k=1, out=tmp_path / "r.zarr")
    run = visualize(run, data=small_test_set, batch_size=8, optimize=True, optimize_steps=2, max_units=8)
    want = feature_visualization("demo", "features.7", list(range(8)), steps=2).no_gradient
    stopped = run.optimized("features.7", key="optimized_stopped")
    np.testing.assert_array_equal(stopped, np.where(want, schema.NO_GRADIENT, -1))
    flat, moved = int(np.flatnonzero(want)[0]), int(np.flatnonzero(~want)[0])
    assert slide_content(run, "features.7", flat, None).peak is None
    assert slide_content(run, "features.7", moved, None).peak == float(run.optimized("features.7", moved,
                                                                                     key="optimized_peak"))
    index = write_report(run, tmp_path / "report", montages=0)
    page, problems = _open(browser, (index.parent / "layers" / "00-features.7.html").as_uri())
    page.wait_for_selector(".card")
    rows = page.evaluate("""() => [...document.querySelectorAll('.card')].slice(0, 8).map(c =>
        [...c.querySelectorAll('.row')].map(r => [r.querySelector('.label')?.textContent,
                                                  r.querySelector('.tile')?.title || '']))
        .map(rs => rs.find(r => r[0] && r[0].includes('optimised')))""")
    assert rows[flat][0] == "not optimised" and rows[flat][1].startswith("no gradient at any step")
    assert rows[moved][0] == "optimised" and rows[moved][1].startswith("feature visualisation (fourier)")
    assert not problems, problems
