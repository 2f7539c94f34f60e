"""The report on runs at the edges, on real images of the embedded data set: a unit whose image
maxima overflow to +inf, layer names and class names that matplotlib would read as mathtext, a
run without labels and one with some unlabelled images, unreadable images skipped while mining,
and the slide's and plots' number formatting. Pages are checked in a real headless Chromium."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sketchmine
from sketchmine.present.report import write_report
from tests.test_report import _open, browser  # noqa: F401  (the Chromium fixture)


def _page_data(path: Path) -> list[dict]:
    text = path.read_text()
    return json.loads(text[text.index("["):text.rindex("]") + 1])


class _Overflow(nn.Module):
    """Channel 0 overflows float32 to +inf wherever it is positive; channel 1 stays finite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1] * 1e38 * 1e38, x[:, 1:]], 1)


class _InfNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.boom = _Overflow()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.clip = nn.Hardtanh(-1e3, 1e3)
        self.fc = nn.Linear(2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.clip(torch.flatten(self.pool(self.boom(self.conv(x))), 1)))


@pytest.fixture(scope="module")
def inf_run(tmp_path_factory, demo_test_set):
    """40 real images through a model whose tapped unit 0 reaches +inf, with the distribution
    statistics, and its pictures."""
    ds = demo_test_set
    sub = [(ds[i][1], int(ds.labels()[i])) for i in range(0, 2000, 50)]
    net = _InfNet()
    run = sketchmine.mine(net, sub, out=tmp_path_factory.mktemp("inf") / "inf.zarr", layers=["boom"],
                          batch_size=40, distributions=True)
    assert np.isinf(run.topk("boom")[0][0, 0])
    return sketchmine.visualize(run, model=net, data=sub, batch_size=64)


def test_infinite_activations_are_shown_as_inf(tmp_path, inf_run, browser):  # noqa: F811
    """An overflowing unit used to crash the report (JSON has no infinity) and the slide
    (formatting None); now its cards, dashboard and slide say "inf"."""
    index = write_report(inf_run, tmp_path / "rep")
    rep = index.parent
    cards = _page_data(rep / "data" / "00-boom" / "page_0000.js")
    assert cards[0]["max"] == "inf" and cards[0]["entries"][0]["value"] == "inf"
    assert isinstance(cards[1]["max"], float)
    dash = _page_data(rep / "dash" / "00-boom" / "unit_0000.js")
    assert dash[0]["max"] == "inf" and dash[0]["quantiles"]["values"][-1] == "inf"
    assert (rep / "montage" / "00-boom" / "0.png").is_file()
    page, problems = _open(browser, (rep / "layers" / "00-boom.html").as_uri())
    page.wait_for_selector("#unit-0")
    assert "max inf" in page.inner_text("#unit-0 h3")
    assert "inf" in page.inner_text("#unit-0 .cap")
    page.goto((rep / "units" / "00-boom.html").as_uri() + "#unit=0")
    page.wait_for_function("() => document.body.getAttribute('data-rendered') === '0'")
    overview = page.inner_text("#overview")
    assert re.search(r"max activation\s+inf", overview) and re.search(r"quantile 1\s+inf", overview)
    assert len(page.query_selector_all("#histogram .mark-top")) == inf_run.k  # marked at the axis's end
    assert problems == []


def test_the_slide_of_an_infinite_unit(inf_run):
    from sketchmine.present.montage import unit_montage

    fig = unit_montage(inf_run, "boom", 0)
    texts = [t.get_text() for t in fig.texts] + [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "inf" in texts and any(t.endswith("  inf") for t in texts)
