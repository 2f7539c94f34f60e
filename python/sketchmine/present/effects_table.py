"""The console table `sketchmine effects` prints per layer: the units that move the output
most, the classes each pushes up and down, and the units most correlated with it."""
from __future__ import annotations

import numpy as np
from rich.table import Table

from sketchmine.present.console import safe, titled
from sketchmine.results.effects import uncorrelated_notes
from sketchmine.results.numbers import column, points
from sketchmine.results.run import Run


def effects_table(run: Run, layer: str, n: int, shown: int = 3) -> Table:
    """The `n` units of `layer` whose largest probability change (any class) is largest:
    the class each pushes up most (zeroing the unit lowers it most) and down most (zeroing
    raises it most), each with the unit's effect, minus the change zeroing it makes (the sign
    and digits `sketchmine unit` and the dashboards show: percentage points, as the importance
    table's probability drop), and its `shown` most correlated units with r (or why it has none)."""
    df = run.unit_effects(layer, "prob")
    units, r = run.correlated_units(layer)
    alone = uncorrelated_notes(run, layer)  # why a unit lists none (a dead unit is constant)
    delta = df.to_numpy()
    names = [safe(c) for c in df.columns]
    table = titled(f"{safe(layer)}\nwhat each unit does to the output (each class's probability with the unit "
                   f"minus with it zeroed, in percentage points, mean over {df.attrs.get('images')} images)")
    for col in ("unit", "largest |Δp| (pt)", "pushes up (pt)", "pushes down (pt)", "most correlated units (r)"):
        table.add_column(col, justify="right" if col in ("unit", "largest |Δp| (pt)") else "left")
    size = np.nan_to_num(np.abs(delta), nan=-1.0).max(axis=1) if delta.size else np.zeros(len(df))
    for u in np.argsort(-size, kind="stable")[:n]:
        low, high = int(np.argmin(delta[u])), int(np.argmax(delta[u]))
        rs = column(r[u][:shown].tolist(), 3)  # r as `sketchmine unit` and the dashboard write it
        corr = ", ".join(f"{int(j)} ({v})" for j, v in zip(units[u][:shown], rs) if j >= 0)
        # a class only where zeroing moves it that way, as the dashboard lists them: a unit that never
        # fires read "bear 0" both ways
        up = f"{names[low]} {points(-delta[u, low], sign=True)}" if delta[u, low] < 0 else "(none)"
        down = f"{names[high]} {points(-delta[u, high], sign=True)}" if delta[u, high] > 0 else "(none)"
        table.add_row(str(int(u)), points(size[u]) if size[u] >= 0 else "-", up, down, corr or alone.get(int(u), "(none)"))
    return table
