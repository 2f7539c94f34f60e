"""A layer's pass resumed on another kind of device than it began on (the visualize pictures,
the optimised inputs): recorded in its claim as stretches and said, since devices round
otherwise and the units from the resume on differ from a pass on one device."""
from __future__ import annotations

from typing import Any

from sketchmine.progress import Progress
from sketchmine.store.checkpoint import resumed_stretches


def resumed_on(name: str, claim: dict[str, Any], kind: str, what: str, differs: str,
               progress: Progress) -> list[list[Any]] | None:
    """The claim's `devices` record ([first unit, device kind] per stretch) for a resume on `kind`,
    or None while one kind made it all; says the change. `differs`: how the units from the resume
    on differ ("{done}" is the first of them)."""
    began, done = claim.get("device"), int(claim.get("units_done", 0))
    if began is None or claim.get("complete"):  # a claim from before the record, or nothing left to do
        return None
    stretches, was = resumed_stretches(claim.get("devices"), began, done, kind)
    if was is not None:
        progress.note(f"layer {name!r} resumes its {what} on {kind}, begun on {was}: {differs.format(done=done)}; "
                      f"--device {was} resumes as it began")
    return stretches
