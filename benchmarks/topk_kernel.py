"""Micro-benchmark of the compiled `topk_update` op against plain torch reductions on
the exact activation shapes of a model's tapped layers (one batch each).

amax(spatial) is the floor for the spatial-max half of the work (vectorised, one read);
max(dim) (value + argmax) is what a torch script would call. The op additionally merges
into the k-deep state, so it should land between the two, not above both.
"""
from __future__ import annotations

import time

import torch
from torch import nn


def layer_shapes(model: nn.Module, layers: list[str], input_px: int = 224) -> dict[str, tuple[int, ...]]:
    """(C, *spatial) of each tapped output, from one batch-1 forward."""
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda _m, _i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
               for n in layers]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_px, input_px))
    finally:
        for h in handles:
            h.remove()
    return shapes


def _best_of(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_layers(model: nn.Module, layers: list[str], batch_size: int, k: int = 9, repeats: int = 10,
                 threads: int | None = None) -> dict:
    """Per layer (best of `repeats`): topk_update into a filled state, amax, max+argmax.

    threads: torch threads for this measurement (restored after). With one thread the
    figures show the kernel's per-element efficiency, immune to a busy second core."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _bench_layers(model, layers, batch_size, k, repeats)
    finally:
        torch.set_num_threads(previous)


def _bench_layers(model: nn.Module, layers: list[str], batch_size: int, k: int, repeats: int) -> dict:
    from sketchmine.stats import ops

    out = {}
    gen = torch.Generator().manual_seed(0)
    for name, shape in layer_shapes(model, layers).items():
        acts = torch.randn(batch_size, *shape, generator=gen)
        state = ops.new_state(shape[0], k)
        calls = {"n": 0}

        def op():
            # new image ids every call: a realistic stream into an already filled state
            base = calls["n"] * batch_size
            calls["n"] += 1
            ops.topk_update(acts, torch.arange(base, base + batch_size), **state)

        flat = acts.reshape(batch_size, shape[0], -1)
        t_op = _best_of(op, repeats)
        t_amax = _best_of(lambda: flat.amax(dim=2), repeats)
        t_max = _best_of(lambda: flat.max(dim=2), repeats)
        out[name] = {"shape": [batch_size, *shape], "elements": acts.numel(), "topk_update_s": t_op,
                     "amax_s": t_amax, "max_argmax_s": t_max, "op_over_amax": t_op / t_amax,
                     "op_gb_per_s": acts.numel() * 4 / t_op / 1e9}
    return out


def summarize(per_layer: dict, bare_s_per_batch: float) -> dict:
    op = sum(v["topk_update_s"] for v in per_layer.values())
    amax = sum(v["amax_s"] for v in per_layer.values())
    mx = sum(v["max_argmax_s"] for v in per_layer.values())
    worst = sorted(per_layer.items(), key=lambda kv: -kv[1]["topk_update_s"])[:3]
    return {"topk_update_s_per_batch": op, "amax_s_per_batch": amax, "max_argmax_s_per_batch": mx,
            "op_over_amax": op / amax if amax else None,
            "op_share_of_bare": op / bare_s_per_batch if bare_s_per_batch else None,
            "slowest_layers": [(n, v["topk_update_s"], v["op_over_amax"]) for n, v in worst]}

