"""A rich Table that never runs past the console's edge. rich keeps a column's `min_width`
(a layer column's longest name, a title's width) even where the columns then do not fit, and
the console cuts every line at its edge: numbers, borders and words lost without a mark."""
from __future__ import annotations

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table


class FittingTable(Table):
    """A Table whose least widths give way where they would not fit: the columns' `min_width`
    are dropped for that rendering (a column that had one folds its text instead of cutting
    it), and the table's own; on a wide enough console it renders as a plain Table."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        if self.__rich_measure__(console, options).minimum <= options.max_width:
            yield from super().__rich_console__(console, options)
            return
        kept = [(c, c.min_width, c.overflow) for c in self.columns]
        table_min = self.min_width
        try:
            for c, least, _ in kept:
                if least:
                    c.min_width, c.overflow = None, "fold"
            self.min_width = None
            yield from super().__rich_console__(console, options)
        finally:  # the same table printed again on a wider console keeps its least widths
            for c, least, overflow in kept:
                c.min_width, c.overflow = least, overflow
            self.min_width = table_min
