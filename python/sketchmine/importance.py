"""Which units matter for the label: ablation importance per unit of a tapped layer.

For every unit (a whole channel, or a recurrent hidden unit at every step) of one layer:
the drop in the correct class's probability and in accuracy when the unit is zeroed,
over the run's dataset, plus the unit's mean activation (its per-image maximum over
positions, the statistic the top-k ranks) on correctly and wrongly predicted images.

Batched two ways, chosen per layer (recorded as `method`):

- "split": the model is traced with torch.fx and cut at the layer; the part up to the layer
  runs once per image chunk, and only the rest of the network runs for the ablations, G
  units at a time on a G-times replicated chunk (each replica zeroes another unit). The
  cut is checked against the full model's logits before it is used.
- "replicate" (when the model cannot be traced or cut): the whole model runs on a
  G-times replicated chunk, a forward hook zeroing a different unit in each replica.

Stored as layers/<name>/importance/{prob_drop, acc_drop, mean_act_correct, mean_act_wrong}
(float64, one per unit) with attrs (images, base accuracy, method, ...).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import fx, nn
from torch.utils.data import DataLoader

from .data import MinerDataset, collate
from .device import as_device
from .errors import SketchmineError
from .run import Run, check_count, open_run
from .taps import SOFTMAX, Taps, ablation_dims, module_of, replace_element, tapped_element, to_units

COLUMNS = ("prob_drop", "acc_drop", "mean_act_correct", "mean_act_wrong")
_BUDGET = 1 << 23  # elements of one replicated activation tensor (32 MB float32)


# ---- ablation plumbing --------------------------------------------------------------------
def zero_units(t: torch.Tensor, batch_dim: int, unit_dim: int, units: list[int],
               replicate: bool = False) -> torch.Tensor:
    """A new tensor of G = len(units) replicas stacked along `batch_dim` (replica-major), where
    replica g has unit `units[g]` zeroed along `unit_dim` (every position). `t` holds the G
    replicas already, or (replicate=True) one copy that is replicated in the same single pass.
    No units: a plain copy."""
    if not units:
        return t.clone()
    bd, ud = batch_dim % t.ndim, unit_dim % t.ndim
    g = len(units)
    v = t.unsqueeze(bd) if replicate else t.unflatten(bd, (g, -1))
    ud = ud + 1 if ud > bd else ud
    mask = torch.zeros(g, t.shape[unit_dim], dtype=torch.bool, device=t.device)
    mask[torch.arange(g), torch.as_tensor(units)] = True
    shape = [1] * v.ndim
    shape[bd], shape[ud] = g, t.shape[unit_dim]
    return torch.where(mask.view(shape), torch.zeros((), dtype=t.dtype, device=t.device), v).flatten(bd, bd + 1)


def _replicate(obj: Any, g: int, batch: int, dim: int) -> Any:
    """G replicas of a value, stacked along `dim` when it holds the batch; other values as is."""
    if isinstance(obj, torch.Tensor):
        d = dim % obj.ndim if obj.ndim else 0
        if obj.ndim and obj.shape[d] % batch == 0:
            return torch.cat([obj] * g, dim=d)
        return obj
    if isinstance(obj, (tuple, list)):
        return type(obj)(_replicate(o, g, batch, dim) for o in obj)
    return obj


class _Replicate:
    """Whole-model forward on a replicated batch; a hook zeroes one unit per replica."""

    method = "replicate"

    def __init__(self, net: nn.Module, layer: str) -> None:
        self.net, self.layer = net, layer
        self.target, self.module = module_of(net, layer)
        self.dims = ablation_dims(layer, self.module)

    def prepare(self, x: torch.Tensor) -> Any:
        return x

    def base(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Unablated logits (B, classes) and the layer's (B, units, *positions) output."""
        act: dict[str, torch.Tensor] = {}
        with Taps(self.net, [self.layer], lambda n, t: act.__setitem__("t", t.clone())):  # before in-place ops
            logits = _logits(self.net(x))
        return logits, act["t"]

    def run(self, x: Any, units: list[int], replicas: int) -> torch.Tensor:
        """(replicas * B, classes) logits; replica g zeroes units[g] (none when units is empty)."""
        def hook(module: nn.Module, inputs: tuple, output: Any) -> Any:
            t = tapped_element(self.layer, module, output)
            return replace_element(output, zero_units(t, *self.dims, units))

        handle = self.module.register_forward_hook(hook)
        try:
            return _logits(self.net(torch.cat([x] * replicas)))
        finally:
            handle.remove()


class _Split(_Replicate):
    """The network cut at the layer by torch.fx: prefix once, suffix per ablation group."""

    method = "split"

    def __init__(self, net: nn.Module, layer: str) -> None:
        super().__init__(net, layer)
        target = self.target

        class Tracer(fx.Tracer):  # the tapped module stays one node, even a whole residual block
            def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
                return qualname == target or super().is_leaf_module(m, qualname)

        gm = fx.GraphModule(net, Tracer().trace(net))
        nodes = list(gm.graph.nodes)
        cuts = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == self.target]
        if len(cuts) != 1:
            raise SketchmineError(f"layer {layer!r} is called {len(cuts)} times in the traced graph")
        pos = cuts[0]
        cut, order = nodes[pos], {n: i for i, n in enumerate(nodes)}
        live = [n for n in nodes[:pos] if n.op != "get_attr" and any(order[u] > pos for u in n.users)]
        prefix, env = fx.Graph(), {}
        for n in nodes[:pos + 1]:
            env[n] = prefix.node_copy(n, lambda a: env[a])
        prefix.output((env[cut], *[env[n] for n in live]))
        suffix, env2 = fx.Graph(), {}
        env2[cut] = suffix.placeholder("tapped")
        for i, n in enumerate(live):
            env2[n] = suffix.placeholder(f"live_{i}")
        for n in nodes[pos + 1:]:
            for a in n.all_input_nodes:
                if a not in env2 and a.op == "get_attr":
                    env2[a] = suffix.node_copy(a, lambda b: env2[b])
            env2[n] = suffix.node_copy(n, lambda a: env2[a])
        self.prefix, self.suffix = fx.GraphModule(gm, prefix), fx.GraphModule(gm, suffix)

    def prepare(self, x: torch.Tensor) -> tuple:
        """The chunk size, the layer's output and every earlier value the rest of the network reads."""
        return (len(x), *self.prefix(x))

    def base(self, state: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        t = tapped_element(self.layer, self.module, state[1])
        return self.run(state, [], 1), to_units(self.layer, self.module, t, state[0])[0]

    def run(self, state: tuple, units: list[int], replicas: int) -> torch.Tensor:
        batch, tapped, *live = state  # a tensor holding the batch has B or B*T (folded frames) rows
        t = tapped_element(self.layer, self.module, tapped)
        zeroed = zero_units(t, *self.dims, units, replicate=True) if units else _replicate(t, replicas, batch,
                                                                                            self.dims[0])
        rest = _replicate(tapped, replicas, batch, self.dims[0]) if isinstance(tapped, (tuple, list)) else tapped
        rep = replace_element(rest, zeroed)
        live = [_replicate(v, replicas, batch, 0) for v in live]
        return _logits(self.suffix(rep, *live))


def _logits(out: Any) -> torch.Tensor:
    out = out[0] if isinstance(out, (tuple, list)) else out
    if out.ndim != 2:
        raise SketchmineError(f"ablation importance needs (N, classes) logits; the model returns {tuple(out.shape)}")
    return out


def _ablator(net: nn.Module, layer: str, x: torch.Tensor, reference: torch.Tensor) -> _Replicate:
    """The split ablator when the model can be cut at the layer and the cut reproduces the
    model's logits (two replicas, nothing zeroed), else whole-model replication."""
    try:
        split = _Split(net, layer)
        with torch.inference_mode():
            got = split.run(split.prepare(x), [], 2)
        if got.shape == (2 * len(x), reference.shape[1]) and torch.allclose(
                got, torch.cat([reference] * 2), rtol=1e-4, atol=1e-5):
            return split
    except Exception:  # untraceable or uncuttable model: replication (which raises what is wrong, if anything)
        pass
    return _Replicate(net, layer)


# ---- the computation ----------------------------------------------------------------------
@dataclass
class Importance:
    """Per-unit results (arrays of length units) and the facts they were computed under."""

    prob_drop: np.ndarray
    acc_drop: np.ndarray
    mean_act_correct: np.ndarray
    mean_act_wrong: np.ndarray
    attrs: dict[str, Any]


def ablation_importance(net: nn.Module, dataset: MinerDataset, layer: str, labels: np.ndarray,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        units_per_pass: int | None = None) -> Importance:
    """Zero each unit of `layer` in turn over `dataset` (batched, see the module docstring).

    labels (N,) int64: the correct class of each image (all >= 0).
    """
    if layer == SOFTMAX:
        raise SketchmineError("layer 'softmax' is the model's output (virtual); ablate a module layer")
    device = torch.device(device)
    net = net.eval().to(device)
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    sums: dict[str, torch.Tensor] = {}
    n_images = n_correct = 0
    prob_base_sum, ablator, groups = 0.0, None, []
    with torch.inference_mode():
        for idx, x, _, notes in loader:
            if any(n.startswith("error:") for n in notes):
                raise SketchmineError(f"cannot read image {dataset.path(int(idx[0]))}: ablation needs every image")
            x, y = x.to(device), labels_t[idx].to(device)
            if ablator is None:
                ablator = _ablator(net, layer, x, _Replicate(net, layer).base(x)[0])
            state = ablator.prepare(x)
            logits, act = ablator.base(state)
            per_image = act.float().flatten(2).amax(dim=2) if act.ndim > 2 else act.float()  # (B, units)
            if not groups:
                units = per_image.shape[1]
                per = max(1, math.prod(act.shape[1:]))
                g = units_per_pass or max(1, min(units, _BUDGET // (per * len(x))))
                groups = [list(range(s, min(s + g, units))) for s in range(0, units, g)]
                sums = {k: torch.zeros(units, dtype=torch.float64) for k in ("prob", "correct", "act_ok", "act_bad")}
            base_p = torch.softmax(logits.double(), 1).gather(1, y[:, None])[:, 0]
            ok = logits.argmax(1) == y
            n_images += len(x)
            n_correct += int(ok.sum())
            prob_base_sum += float(base_p.sum())
            sums["act_ok"] += per_image[ok].double().sum(0).cpu()
            sums["act_bad"] += per_image[~ok].double().sum(0).cpu()
            for group in groups:
                out = ablator.run(state, group, len(group)).double().view(len(group), len(x), -1)
                p = torch.softmax(out, 2).gather(2, y[None, :, None].expand(len(group), -1, 1))[..., 0]
                sums["prob"][group] += (base_p[None] - p).sum(1).cpu()
                sums["correct"][group] += (out.argmax(2) == y[None]).sum(1).double().cpu()
    if not n_images:
        raise SketchmineError("the dataset is empty: no images to ablate over")
    n_wrong = n_images - n_correct
    nan = float("nan")
    return Importance(
        prob_drop=(sums["prob"] / n_images).numpy(),
        acc_drop=((n_correct - sums["correct"]) / n_images).numpy(),
        mean_act_correct=(sums["act_ok"] / n_correct).numpy() if n_correct else np.full(len(sums["prob"]), nan),
        mean_act_wrong=(sums["act_bad"] / n_wrong).numpy() if n_wrong else np.full(len(sums["prob"]), nan),
        attrs={"images": n_images, "base_accuracy": n_correct / n_images, "base_mean_prob": prob_base_sum / n_images,
               "method": ablator.method if ablator else None, "units_per_pass": len(groups[0]) if groups else 0,
               "ablation": "unit zeroed at every position (a recurrent unit: in the layer's output, every step)",
               "activation": "per-image maximum over the unit's positions"},
    )


# ---- run API ------------------------------------------------------------------------------
def _labels(run: Run, ds: MinerDataset) -> np.ndarray:
    labels = ds.labels()
    labels = run.labels if labels is None else np.asarray(labels)
    classes = int(run.attrs.get("num_classes") or 0)
    if len(labels) != len(ds) or (labels < 0).any() or not classes or (labels >= classes).any():
        raise SketchmineError(f"run {run.path}: the dataset has no class label for every image (labels 0..{classes - 1} "
                              "expected); ablation importance measures the correct class, so it needs a labelled dataset")
    return labels


def unit_importance(run: Run | str | os.PathLike, layer: str | list[str], model: Any = None, dataset: Any = None,
                    *, weights: str | os.PathLike | None = None, batch_size: int = 256,
                    device: str | torch.device = "cpu", units_per_pass: int | None = None) -> pd.DataFrame:
    """Compute and store per-unit ablation importance of `layer` (or each of a list) of a
    mined run; returns the (last) layer's table, as `Run.unit_importance` reads it back.

    model/dataset: as mined; None reloads them from the run's record (reload.py). The
    model's weights must be those the run was mined with.
    """
    if units_per_pass is not None and units_per_pass < 1:
        raise SketchmineError(f"units_per_pass must be at least 1 (or None to size passes by memory), got {units_per_pass}")
    if batch_size < 1:
        raise SketchmineError(f"batch_size must be at least 1, got {batch_size}")
    device = as_device(device)
    layers = [layer] if isinstance(layer, str) else list(layer)
    if not layers:
        raise SketchmineError("no layer given; name the layers to ablate")
    run = run if isinstance(run, Run) else open_run(run)
    from . import reload

    loaded = reload.run_model(run, model, weights)
    ds = reload.run_dataset(run, dataset)
    labels = _labels(run, ds)
    for name in layers:
        run._check_layer(name)
        if not isinstance(loaded.module, nn.Module):
            raise SketchmineError(f"run {run.path}: ablation importance needs the torch model (pass model=...)")
        result = ablation_importance(loaded.module, ds, name, labels, batch_size, device, units_per_pass)
        write_importance(run, name, result)
    return open_run(run.path).unit_importance(layers[-1])


def write_importance(run: Run, layer: str, result: Importance) -> None:
    """layers/<layer>/importance/<column> arrays plus attrs; replaces an earlier result as a
    unit (RunStore.write_group): an interrupted write leaves the earlier result, or none."""
    from .store import RunLock, RunStore

    run._check_layer(layer)
    lock = RunLock(run.path)
    lock.acquire()
    try:
        RunStore.open(run.path, mode="r+").write_group(
            f"layers/{layer}/importance",
            {col: np.asarray(getattr(result, col), dtype=np.float64) for col in COLUMNS}, dict(result.attrs))
    finally:
        lock.release()


def has_importance(run: Run, layer: str) -> bool:
    """True when `layer` has a whole stored importance result (see write_importance)."""
    return run.store.read_group(f"layers/{run._check_layer(layer)}/importance", COLUMNS) is not None


def read_importance(run: Run, layer: str) -> pd.DataFrame:
    """(unit, prob_drop, acc_drop, mean_act_correct, mean_act_wrong), one row per unit,
    most important (largest prob_drop) first. A result whose write was interrupted counts
    as not computed."""
    found = run.store.read_group(f"layers/{run._check_layer(layer)}/importance", COLUMNS)
    if found is None:
        raise SketchmineError(f"run {run.path} has no unit importance for {layer!r}; compute it with "
                              f"sketchmine importance {run.path} --layers {layer}")
    arrays, attrs = found
    df = pd.DataFrame(arrays)
    df.insert(0, "unit", np.arange(len(df)))
    attrs.pop("complete", None)
    df.attrs.update(attrs)
    return df.sort_values(["prob_drop", "unit"], ascending=[False, True], kind="stable").reset_index(drop=True)


def plot_importance(run: Run, layers: list[str] | None = None, n: int = 10, path: str | os.PathLike | None = None):
    """Bar chart of the n most important units (prob drop; accuracy drop annotated) of each
    layer with stored importance; saved as PNG when `path` is given. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = layers or [l for l in run.layers if has_importance(run, l)]
    if not names:
        raise SketchmineError(f"run {run.path} has no unit importance yet; run sketchmine importance first")
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 0.35 * n * len(names) + 1.2), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        df = read_importance(run, name).head(check_count(n))
        ax.barh([f"unit {u}" for u in df["unit"]][::-1], df["prob_drop"][::-1], color="#4c72b0")
        for i, (p, a) in enumerate(zip(df["prob_drop"][::-1], df["acc_drop"][::-1])):
            ax.text(p, i, f"  acc −{a * 100:.1f} pt", va="center", fontsize=7)
        ax.set_title(f"{name}: most important units (ablated)", fontsize=9)
        ax.set_xlabel("drop in correct-class probability", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def importance_table(run: Run, name: str, n: int) -> Any:
    """A rich table of the `n` units of `name` that matter most for the correct class."""
    from rich.table import Table

    df = run.unit_importance(name)
    table = Table(title=f"{name}: units that matter most for the correct class "
                        f"({df.attrs['images']} images, accuracy {df.attrs['base_accuracy'] * 100:.2f}%)")
    for col in df.columns:
        table.add_column(col, justify="right")
    for row in df.head(check_count(n)).itertuples(index=False):
        table.add_row(str(row.unit), *(f"{v:.4f}" for v in row[1:]))
    return table


def run_cli(args: Any, console: Any) -> None:
    """`sketchmine importance RUN [--layers ...]`: compute, store, print the top units, plot.
    The layers and the plot path are checked before any computation; Ctrl-C says which
    layers' importance was stored (a re-run recomputes every layer it is given)."""
    from .console import importance_table as table, safe
    from .plots import check_plot_path, save_figure

    run = open_run(args.run)
    layers = args.layers or [l for l in run.layers if l != SOFTMAX and not l.endswith(".cell")]
    for name in layers:
        run._check_layer(name)
    if args.plot:
        check_plot_path(args.plot)
    done: list[str] = []
    try:
        for name in layers:
            unit_importance(run, name, args.model, args.data, weights=args.weights, batch_size=args.batch_size,
                            device=args.device)
            done.append(name)
    except KeyboardInterrupt:
        rest = [l for l in layers if l not in done]
        kept = (f"the importance of {', '.join(done)} is stored" if done else "no layer's importance was stored")
        raise KeyboardInterrupt(f"interrupted; {kept}; a re-run recomputes every layer it is given, so pass "
                                f"--layers {' '.join(rest)} to compute only the rest") from None
    run = open_run(args.run)
    for name in layers:
        console.print(table(run, name, args.n))
    if args.plot:
        save_figure(plot_importance(run, layers, args.n), args.plot)
        console.print(f"plot written to {safe(args.plot)}")
