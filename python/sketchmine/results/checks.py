"""Checks of what a reader of a run is asked for (a count of rows, an array's name): one place,
so every reader refuses the same things in the same words."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sketchmine.errors import RunDamaged, SketchmineError, closest, whole_number
from sketchmine.names import command, layer_arg
from sketchmine.results.effects import onnx_run
from sketchmine.results.optimized import pictures_command
from sketchmine.store import schema

T = TypeVar("T")


def check_count(n: int) -> int:
    """A number of rows asked for: at least 1 (pandas would read 0 and -1 as "none" and "all but one")."""
    return whole_number(n, "n")


def check_array_name(name: str) -> str:
    """`name` when the schema declares it as a layer array; a typo is an unknown name (listing the
    valid ones), not a run "damaged" by a missing array."""
    if isinstance(name, str) and name in schema.LAYER_DIMENSIONS:
        return name
    hint = closest(name, schema.LAYER_DIMENSIONS) if isinstance(name, str) else []
    raise SketchmineError(f"unknown layer array name {name!r}" + (f" (closest: {', '.join(hint)})" if hint else "")
                          + f"; a layer's arrays are {', '.join(schema.LAYER_DIMENSIONS)}")


def check_rows(rows: slice | None) -> slice | None:
    """Rows of an array asked for: a slice or None (all); an int or a list would fail inside the store."""
    if rows is not None and not isinstance(rows, slice):
        raise SketchmineError(f"rows must be a slice (e.g. slice(0, 10)) or None for all rows, got "
                              f"{type(rows).__name__} {rows!r}")
    return rows


def check_dataset_array_name(name: str) -> str:
    """`name` when the schema declares it as a dataset/ array; a typo is an unknown name (listing the
    valid ones), not a run "damaged" by a missing array, and a path ("../eval") never reaches the store."""
    known = [path.split("/", 1)[1] for path in schema.DIMENSIONS if path.startswith(schema.DATASET + "/")]
    if isinstance(name, str) and name in known:
        return name
    raise SketchmineError(f"unknown dataset array name {name!r}; the dataset arrays are {', '.join(known)}")


def check_result_name(name: str) -> str:
    """`name` when the schema declares it as a later pass's result group on a layer (importance,
    effects, correlated, traces, example pictures); a path ("../..") never reaches the store."""
    known = [*schema.RESULT_DIMENSIONS, *schema.PICTURE_GROUPS.values()]
    if isinstance(name, str) and name in known:
        return name
    raise SketchmineError(f"unknown layer result name {name!r}; a layer's results are {', '.join(known)}")


def absent_read(run: Any, path: str, read: Callable[[], T]) -> T:
    """`read()` of the array at schema path `path`; where it raises RunDamaged because the run never
    held the array (`run.store.has(path)` False: a partial run, whose results are its checkpoint's, or a complete
    one mined without the pass that writes it, or by a version before it), a SketchmineError saying
    so: "damaged, mine again" was said of a run that is whole. An array the run holds or recorded
    checksums of and cannot read is damage, as before."""
    try:
        return read()
    except RunDamaged:
        if run.complete and run.store.has(path):
            raise
        if not run.complete:
            raise SketchmineError(f"run {run.path} is not complete ({run.images_done} images mined): its arrays are "
                                  f"written when mining ends, so it holds no {path!r} yet; read its partial results "
                                  "with the Run readers (topk, class_histogram, ...), or run the same mine again to "
                                  "finish it") from None
        key = path.rsplit("/", 1)[-1]
        what = ("it was mined without distributions: mine it again with --distributions into a new --out"
                if key in schema.DISTRIBUTION_ARRAYS else _pictures_absent(run, path.split("/")[1], key)
                if key in schema.VISUAL_ARRAYS else
                "the passes and the sketchmine version that made the run did not write it (the run is not damaged; "
                "Run.has_array and has_dataset_array say what it holds)")
        raise SketchmineError(f"run {run.path} holds no array {path!r}: {what}") from None


def _pictures_absent(run: Any, layer: str, key: str) -> str:
    """Why a layer holds no visualize array `key`, and the command that adds it. A patches-only
    pass (`--method none`) writes no deconv: the plain `visualize` command said before added
    nothing to an ONNX run and was refused on a torch run (its pictures' method differs)."""
    have = run.layer_attrs(layer).get(schema.VISUALIZED) or {}
    if key != "deconv" or have.get("method") != schema.PATCHES_ONLY:
        return f"run `{pictures_command(run, layer)}` to add a layer's pictures"
    if onnx_run(run):
        return ("its pictures are patches only (--method none), the only ones of a run mined from an ONNX file, "
                "which has no gradients: mine the torch model into a new run for deconvolutions")
    redo = command("sketchmine", "visualize", run.path, "--layers", layer_arg([layer]), "--method", "deconvnet", "--redo")
    return f"its pictures are patches only (--method none); `{redo}` replaces them with patches and deconvolutions"
