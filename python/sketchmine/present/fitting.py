"""A rich Table that never runs past the console's edge and never cuts a word of a header. rich
keeps a column's `min_width` (a layer column's longest name, a title's width) even where the
columns then do not fit, and the console cuts every line at its edge: numbers, borders and words
lost without a mark; and where a table is too wide it narrows its columns evenly, so a header
lost its end to an ellipsis ("activati…", "select…") while a column of short numbers beside it
kept room to spare."""
from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Column, Table

_LAYOUT = all(hasattr(Table, name) for name in ("_measure_column", "_extra_width", "_get_padding_width"))
"""rich's own column measures (private, present in rich 13 to 15): a rich without them gets the
plainer fit, every column folding where the table does not fit."""


class FittingTable(Table):
    """A Table that, where it does not fit, gives each column at least its longest word (of its
    header and cells: headers wrap between words, numbers stay whole); then, where there is room,
    a column with a least width (`min_width`: a layer name) or that folds (a path) its whole text
    before the others widen, and such a column folds what does not fit. Where even the longest
    words do not fit, every column folds its text instead of cutting it. On a wide enough console
    it is a plain Table."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        widths = self._fitted(console, options)
        if widths is None:
            yield from super().__rich_console__(console, options)
            return
        kept = [(c, c.width, c.min_width, c.overflow) for c in self.columns]
        table_min = self.min_width
        try:
            for (c, _, least, overflow), width in zip(kept, widths):
                if least or overflow == "fold" or width is None:
                    c.overflow = "fold"  # what does not fit goes on the next line, none of it cut
                c.min_width = None
                if width is not None:
                    c.width = width
            self.min_width = None
            yield from super().__rich_console__(console, options)
        finally:  # the same table printed again on a wider console keeps its settings
            for c, width, least, overflow in kept:
                c.width, c.min_width, c.overflow = width, least, overflow
            self.min_width = table_min

    def _fitted(self, console: Console, options: ConsoleOptions) -> list[int | None] | None:
        """The columns' content widths where the table does not fit as rich lays it out: None
        where it does; a list of None where not even the longest words fit (each column folds)."""
        if not _LAYOUT:
            fits = self.__rich_measure__(console, options).minimum <= options.max_width
            return None if fits else [None] * len(self.columns)
        room = options.max_width - self._extra_width
        natural = [self._measure_column(console, options, c) for c in self.columns]
        if sum(m.maximum for m in natural) <= room:
            return None
        pads = [self._get_padding_width(i) for i in range(len(self.columns))]
        least = [c.min_width for c in self.columns]
        try:  # the columns' own words, without the least widths
            for c in self.columns:
                c.min_width = None
            plain = [self._measure_column(console, options, c) for c in self.columns]
        finally:
            for c, w in zip(self.columns, least):
                c.min_width = w
        floors = [(_header_word(console, options, c) + p if (w or c.overflow == "fold") else
                   m.maximum if c.no_wrap else m.minimum) for c, w, p, m in zip(self.columns, least, pads, plain)]
        if sum(floors) > room:
            return [None] * len(self.columns)
        widths = list(floors)
        spare = room - sum(widths)
        for i, c in enumerate(self.columns):  # a name that would fold kept whole where there is room
            if least[i] or c.overflow == "fold":
                give = min(spare, max(0, max(least[i] or 0, natural[i].maximum - pads[i]) + pads[i] - widths[i]))
                widths[i] += give
                spare -= give
        wants = [max(0, m.maximum - w) for m, w in zip(natural, widths)]
        total = sum(wants)
        if total and spare:  # the rest to each column as it wants more
            shares = [spare * want // total for want in wants]
            for i in sorted(range(len(wants)), key=lambda i: -(spare * wants[i] % total))[:spare - sum(shares)]:
                shares[i] += 1
            widths = [w + s for w, s in zip(widths, shares)]
        return [w - p for w, p in zip(widths, pads)]


def _header_word(console: Console, options: ConsoleOptions, column: Column) -> int:
    """The longest word of a column's header, in cells."""
    header = column.header
    text = console.render_str(header) if isinstance(header, str) else header
    return Measurement.get(console, options, text).minimum
