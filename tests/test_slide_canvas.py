"""The report's fast slide path (present/slide_canvas.py: one canvas kept a slide, text glyphs
rendered once, an opaque slide written as RGB) draws the pixels of a slide built afresh and saved
by matplotlib's own canvas, unit after unit: texts longer then shorter (no stale pixel of the last
unit), a layer whose units change the slide's shapes (an optimised input for some units only), and
a transparent figure. A real mined, visualized run of the demo model."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from matplotlib import rc_context
from PIL import Image

import sketchmine
from sketchmine.present.montage import DPI, Slide, Slides, slide_content, write_slide
from sketchmine.present.slide_canvas import CACHED
from tests.helpers import per_class_subset

# features.6: 9 patches and deconvolutions; classifier.6: an optimised input for units 0-5 only
ORDER = [("classifier.6", 5), ("classifier.6", 6), ("classifier.6", 0), ("classifier.6", 9),
         ("features.6", 12), ("features.6", 3), ("features.6", 11), ("features.6", 0), ("features.6", 10),
         ("features.6", 7), ("classifier.6", 2)]


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_test_set):
    from sketchmine.passes.visualize import visualize

    subset = per_class_subset(demo_test_set, 6, "slides")
    r = sketchmine.mine("demo", subset, out=tmp_path_factory.mktemp("speed") / "run.zarr", batch_size=60,
                        layers=["features.6", "classifier.6"])
    visualize(r, data=subset, batch_size=256)
    return visualize(r, ["classifier.6"], data=subset, batch_size=4, optimize=True, optimize_steps=3, max_units=6)


def _fresh(content) -> np.ndarray:
    """The slide as the report drew it before: a new Slide, saved through matplotlib's canvas."""
    out = io.BytesIO()
    fig = Slide(content.key).fill(content)
    fig.savefig(out, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    return np.asarray(Image.open(out).convert("RGBA"))


def test_the_fast_path_draws_each_slide_as_one_built_afresh(run, tmp_path):
    contents = [slide_content(run, layer, unit, None) for layer, unit in ORDER]
    keys = [c.key for c in contents]
    assert len(set(keys)) == 3 and any(a != b for a, b in zip(keys, keys[1:]))  # the shapes change between units
    assert any(a.key == b.key and len(b.title) < len(a.title) for a, b in zip(contents, contents[1:]))
    assert any(c.opt is None for c in contents) and any(c.opt is not None for c in contents)
    slides, drawn = Slides(), []
    for i, content in enumerate(contents):
        path = write_slide(slides.draw(content), tmp_path / f"{i}.png")
        with Image.open(path) as im:
            assert im.size == (1600, 900) and im.mode == "RGB"  # opaque: written without its alpha
            drawn.append(np.asarray(im.convert("RGBA")))
    for (layer, unit), content, fast in zip(ORDER, contents, drawn):
        fresh = _fresh(content)
        assert (fresh[..., 3] == 255).all()
        diff = np.argwhere((fast != fresh).any(axis=-1))
        assert not len(diff), f"{layer} unit {unit}: {len(diff)} pixels differ, the first at (y, x) {diff[0]}"
    assert len({a.tobytes() for a in drawn}) == len(ORDER)  # every unit its own slide, none blank
    assert CACHED  # the matplotlib the project runs on takes the cached text path, the one compared here


def test_a_transparent_slide_is_written_as_matplotlib_writes_it(run, tmp_path):
    """No white page under it: what the unit before left on the kept canvas would show."""
    before, content = (slide_content(run, "features.6", u, None) for u in (10, 4))
    assert len(content.title) < len(before.title)
    with rc_context({"savefig.transparent": True}):
        slides = Slides()
        write_slide(slides.draw(before), tmp_path / "before.png")
        fast = write_slide(slides.draw(content), tmp_path / "t.png")
        fresh = _fresh(content)
    with Image.open(fast) as im:
        assert im.mode == "RGBA"
        assert (fresh[..., 3] < 255).any() and np.array_equal(np.asarray(im), fresh)


def test_a_slide_kept_for_the_next_unit_has_its_own_canvas(run, tmp_path):
    """The report's slide draws again on the canvas it kept; the Figure `unit_montage` returns
    is left to matplotlib's (a notebook's backend)."""
    slides = Slides()
    fig = slides.draw(slide_content(run, "features.6", 1, None))
    canvas = fig.canvas
    write_slide(fig, Path(tmp_path / "a.png"))
    assert slides.draw(slide_content(run, "features.6", 2, None)).canvas is canvas


def test_cached_text_is_matplotlib_text_at_every_size_place_and_style(tmp_path):
    """The glyph and layout caches keyed by all that changes a glyph: one string at several sizes,
    weights, colours, sub-pixel places, unantialiased, rotated and as mathtext; drawn twice on one
    kept canvas (the second from the caches), each PNG equal to matplotlib's own."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sketchmine.present.slide_canvas import SlideCanvas

    def figure(shift: float) -> Figure:
        fig = Figure(figsize=(6, 4), dpi=DPI, facecolor="white")
        for i, (size, weight, aa) in enumerate([(9, "normal", True), (10, "normal", True), (12, "bold", True),
                                                (12, "normal", False), (12, "normal", True), (15, "normal", True)]):
            fig.text(0.02 + 0.0013 * i + shift, 0.92 - 0.13 * i, "max 0.890 ×12 Wavy", fontsize=size, weight=weight,
                     antialiased=aa, color=("#555555", "black")[i % 2])
        fig.text(0.6, 0.3, "max 0.890", fontsize=12, rotation=30)
        fig.text(0.6 + shift, 0.1, r"$x^2$ max", fontsize=12)
        return fig

    for shift in (0.0, 0.00037):
        fig = figure(shift)
        kept = SlideCanvas(fig)
        for n in range(2):
            fast, fresh = tmp_path / f"fast{n}.png", tmp_path / f"fresh{n}.png"
            kept.print_figure(fast, format="png", dpi=DPI)
            FigureCanvasAgg(figure(shift)).print_figure(fresh, format="png", dpi=DPI)
            with Image.open(fast) as a, Image.open(fresh) as b:
                assert np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA"))), (shift, n)
