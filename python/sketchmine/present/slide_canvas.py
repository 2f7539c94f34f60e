"""The canvas the report's slides are drawn on: one a slide figure, kept for every unit it shows,
its text glyphs rendered once a process. Why: matplotlib (3.11) lays out each text and renders each
of its glyphs with FreeType again on every draw, and `savefig` makes a new canvas (and renderer, so
an empty text-metrics cache) a slide; with ~45 texts, that was three quarters of a slide's drawing.

A glyph's bitmap depends on its font, size, hinting, antialiasing and where in a pixel it starts
(the 1/64 pixel fraction of FreeType's translation): a whole-pixel shift moves the bitmap and
changes none of its values (FreeType rasterises the outline moved to its rounded-down box). The
cache is keyed by exactly those (the font by its object, which matplotlib makes per file list,
hinting factor and thread, and which the key keeps alive so its id is never another's), so the
pixels are the ones matplotlib draws (tests/test_slide_canvas.py compares slides with ones drawn
afresh, and the report's slides of the demo runs were compared with the old code's). The hooks
are matplotlib's private ones (3.11); where they are missing (other versions) the canvas is still
kept but the text is drawn as matplotlib draws it.
"""
from __future__ import annotations

import threading
from typing import Any

import matplotlib as mpl
import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg, get_hinting_flag
from matplotlib.ft2font import FT2Font
from PIL import Image
from PIL.PngImagePlugin import PngInfo

GLYPHS = 200_000
"""Glyph bitmaps kept at most (a few hundred bytes each); past it the cache starts again."""
LAYOUTS = 20_000
"""Laid-out strings kept at most."""

_glyphs: dict[tuple[Any, ...], tuple[np.ndarray, int, int]] = {}
_layouts: dict[tuple[Any, ...], list[tuple[Any, int, float, float]]] = {}
_renderers: dict[tuple[Any, ...], RendererAgg] = {}
# the hooks of matplotlib's Agg text drawing this replaces (3.11: per-glyph FreeType rendering)
CACHED = all(hasattr(RendererAgg, n) for n in ("_draw_text_glyphs_and_boxes", "_prepare_font")) and \
    all(hasattr(FT2Font, n) for n in ("_layout", "_render_glyph", "_set_transform"))


class _Renderer(RendererAgg):
    """RendererAgg whose straight text (no angle, no mathtext) takes its layouts and glyph
    bitmaps from the process's caches."""

    def draw_text(self, gc: Any, x: float, y: float, s: str, prop: Any, angle: float, ismath: Any = False,
                  mtext: Any = None) -> None:
        if ismath or angle:
            return super().draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        font = self._prepare_font(prop)
        size = prop.get_size_in_points()
        features = mtext.get_fontfeatures() if mtext is not None else None
        language = mtext.get_language() if mtext is not None else None
        flags = get_hinting_flag()
        key = (font, size, self.dpi, s, flags, features, language)
        items = _layouts.get(key)
        if items is None:
            items = [(i.ft_object, i.glyph_index, i.x, i.y)
                     for i in font._layout(s, flags=flags, features=features, language=language)]
            if len(_layouts) >= LAYOUTS:
                _layouts.clear()
            _layouts[key] = items
        self._draw_glyphs(gc, x, y, size, flags, items)

    def _draw_glyphs(self, gc: Any, x: float, y: float, size: float, flags: Any,
                     items: list[tuple[Any, int, float, float]]) -> None:
        """matplotlib's `_draw_text_glyphs_and_boxes` at angle 0, each bitmap rendered once."""
        antialiased = gc.get_antialiased()
        mode = _render_mode(antialiased)
        for font, glyph, dx, dy in items:
            tx, ty = round(0x40 * (x + dx)), round(0x40 * (self.height - y + dy))  # 26.6, FreeType's y upwards
            key = (font, size, self.dpi, glyph, flags, antialiased, tx & 0x3F, ty & 0x3F)
            hit = _glyphs.get(key)
            if hit is None:
                font.set_size(size, self.dpi)
                font._set_transform(np.array([[0x10000, 0], [0, 0x10000]]), [tx & 0x3F, ty & 0x3F])
                bitmap = font._render_glyph(glyph, flags, mode)
                buffer = bitmap.buffer if antialiased else bitmap.buffer * 0xFF
                hit = (buffer, bitmap.left, bitmap.top)
                if len(_glyphs) >= GLYPHS:
                    _glyphs.clear()
                _glyphs[key] = hit
            buffer, left, top = hit
            # the bitmap placed as matplotlib places it: draw_text_image's y is downwards, the bottom side
            self._renderer.draw_text_image(buffer, left + (tx >> 6), int(self.height) - (top + (ty >> 6))
                                           + buffer.shape[0], 0, gc)


def _render_mode(antialiased: bool) -> Any:
    from matplotlib.ft2font import RenderMode  # type: ignore[attr-defined]  # 3.11 on, as the hooks

    return RenderMode.NORMAL if antialiased else RenderMode.MONO


class SlideCanvas(FigureCanvasAgg):
    """The Agg canvas of one slide figure, kept with it, drawing on the process's renderer of its
    size (and so with matplotlib's text-metrics cache warm), its text from the glyph cache."""

    def print_png(self, filename_or_obj: Any, *, metadata: dict[str, str] | None = None,
                  pil_kwargs: dict[str, Any] | None = None, **applied: Any) -> None:
        """matplotlib's PNG, as RGB where every pixel is opaque (a slide on its white page): the
        same colours, a quarter less for zlib and the filters (31.9 → 23.3 ms a slide, 114 → 101 kB).
        `applied`: the dpi and colours `savefig` has set on the figure already."""
        FigureCanvasAgg.draw(self)
        if not (np.asarray(self.buffer_rgba())[..., 3] == 255).all():  # transparent (savefig.transparent): as matplotlib
            mpl.image.imsave(filename_or_obj, self.buffer_rgba(), format="png", origin="upper", dpi=self.figure.dpi,
                             metadata=metadata, pil_kwargs=pil_kwargs)
            return
        kwargs = dict(pil_kwargs or {})
        if "pnginfo" not in kwargs:  # the words matplotlib writes into its PNGs
            kwargs["pnginfo"] = info = PngInfo()
            for k, v in {"Software": f"Matplotlib version{mpl.__version__}, https://matplotlib.org/",
                         **(metadata or {})}.items():
                if v is not None:
                    info.add_text(k, v)
        kwargs.setdefault("dpi", (self.figure.dpi, self.figure.dpi))
        w, h = self.get_width_height(physical=True)
        # read as RGB straight from the RGBA buffer ("RGBX": the fourth byte skipped), no copy of it first
        Image.frombytes("RGB", (w, h), self.buffer_rgba(), "raw", "RGBX").save(filename_or_obj, format="png",
                                                                              **kwargs)

    def get_renderer(self) -> RendererAgg:
        """One renderer a size and thread for every slide: matplotlib's text-metrics cache is the
        renderer's, so the next layer's slide starts with it warm (each draw clears the pixels)."""
        w, h = self.get_width_height(physical=True)
        key = (w, h, self.figure.dpi, threading.get_ident())
        if key not in _renderers:
            _renderers[key] = (_Renderer if CACHED else RendererAgg)(w, h, self.figure.dpi)
        self.renderer = _renderers[key]
        return self.renderer
