"""Peers run on the same model and images as sketchmine, for side-by-side timings.

zennit-crp 0.6 (`FeatureVisualization.run`) is the peer that mines reference samples per
channel over a dataset; it is installed into the benchmark environment only
(`pip install zennit-crp==0.6.0`). When it is missing the suite skips it and says so.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import tempfile
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset


def zennit_crp_available() -> str | None:
    """None when zennit-crp can be used, else why not (for the report)."""
    try:
        import crp  # noqa: F401
        import zennit  # noqa: F401
    except ImportError as exc:
        return f"zennit-crp not installed ({exc.name}); pip install zennit-crp==0.6.0 to include it"
    return None


class _Pairs(Dataset):
    """(image, label) view of a sketchmine dataset: what zennit-crp indexes."""

    def __init__(self, ds: Any) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        _, x, y, _ = self.ds[i]
        return x, int(y)


def zennit_crp_run(model: nn.Module, ds: Any, layers: list[str], batch_size: int) -> dict[str, float]:
    """Time `FeatureVisualization.run` over the whole dataset for every given layer: it
    keeps, per channel, the reference samples of maximal activation and relevance (one
    forward and one LRP backward per batch, as the library does it)."""
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization
    from zennit.composites import EpsilonPlusFlat

    net = copy.deepcopy(model).eval()
    for m in net.modules():  # zennit's backward hooks cannot follow in-place ops
        if isinstance(m, nn.ReLU):
            m.inplace = False
    os.environ.setdefault("TQDM_DISABLE", "1")  # its progress bars would flood the suite's log
    with tempfile.TemporaryDirectory(prefix="zennit-crp-") as path, contextlib.redirect_stdout(io.StringIO()):
        attribution = CondAttribution(net, no_param_grad=True)
        fv = FeatureVisualization(attribution, _Pairs(ds), {name: ChannelConcept() for name in layers},
                                  path=path)
        t = time.perf_counter()
        fv.run(EpsilonPlusFlat(), 0, len(ds), batch_size=batch_size, checkpoint=10**9)
        wall = time.perf_counter() - t
    return {"wall": wall}


def _self_check() -> None:
    """python -m benchmarks.peers: a few AlexNet images through the peer."""
    from .common import build_model, conv_linear_layers, make_dataset

    why = zennit_crp_available()
    if why:
        print(why)
        return
    model = build_model("alexnet")
    ds = make_dataset(16)
    print(zennit_crp_run(model, ds, conv_linear_layers(model), batch_size=8))


if __name__ == "__main__":
    torch.set_num_threads(torch.get_num_threads())
    _self_check()
