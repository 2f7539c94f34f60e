"""Regulariser settings of feature visualisation (featvis_params.settings) and the other
arguments of `feature_visualization`: a value the optimisation would misread (a string taken
for True, a fraction truncated, a NaN learning rate, a percentile past 100) is refused with
what was expected, before anything runs."""
from __future__ import annotations

import numpy as np
import pytest

from sketchmine.errors import SketchmineError
from sketchmine.passes.featvis import feature_visualization
from sketchmine.regularizers import settings


@pytest.mark.parametrize(("method", "given", "said"), [
    ("fourier", {"transforms": "no"}, "'transforms' .* True or False"),
    ("fourier", {"decorrelate": "False"}, "'decorrelate' .* True or False"),
    ("fourier", {"lr": float("nan")}, "'lr' .* finite number above 0"),
    ("fourier", {"lr": -1}, "'lr' .* finite number above 0"),
    ("fourier", {"lr": "0.05"}, "'lr' .* finite number above 0"),
    ("fourier", {"init_std": -0.01}, "'init_std' .* at least 0"),
    ("fourier", {"decay_power": "x"}, "'decay_power' .* finite number"),
    ("fourier", {"decay_power": float("inf")}, "'decay_power' .* finite number"),
    ("pixel", {"blur_every": 2.5}, "'blur_every' .* whole number"),
    ("pixel", {"blur_every": -4}, "'blur_every' .* whole number"),
    ("pixel", {"norm_pct": 150}, "'norm_pct' .* from 0 to 100"),
    ("pixel", {"contrib_pct": -5}, "'contrib_pct' .* from 0 to 100"),
    ("pixel", {"decay": 2}, "'decay' .* from 0 to 1"),
    ("pixel", {"blur_radius": -1}, "'blur_radius' .* at least 0"),
    ("pixel", {"blur_radius": float("nan")}, "'blur_radius' .* at least 0"),
    ("pixel", {"lr": True}, "'lr' .* finite number above 0"),
])
def test_bad_regularizer_values_are_refused(method, given, said):
    with pytest.raises(SketchmineError, match=said):
        settings(method, given)


def test_good_values_pass_unchanged():
    s = settings("pixel", {"blur_every": np.int64(2), "norm_pct": 100, "decay": 0.0, "lr": np.float32(0.5)})
    assert s["blur_every"] == 2 and s["norm_pct"] == 100 and s["lr"] == 0.5
    assert settings("fourier", {"transforms": np.bool_(False), "decay_power": 0})["transforms"] is False


def test_regularizers_of_another_type_are_refused():
    with pytest.raises(SketchmineError, match="regularizers must be"):
        settings("fourier", 123)  # type: ignore[arg-type]
    with pytest.raises(SketchmineError, match="regularizers must be"):
        settings("fourier", ["lr"])  # type: ignore[arg-type]


def test_seed_past_64_bits_is_refused(demo_model):
    with pytest.raises(SketchmineError, match="seed must be .* below 2\\*\\*64"):
        feature_visualization(demo_model, "features.0", [0], steps=1, seed=2 ** 64)
    r = feature_visualization(demo_model, "features.0", [0], steps=1, seed=2 ** 64 - 1)
    assert r.seed == 2 ** 64 - 1


def test_a_preprocessing_with_other_channels_is_named(demo_model):
    from sketchmine.data import Preprocessing

    with pytest.raises(SketchmineError, match=r"preprocessing it was trained with \(preprocessing=; this one gives 3 "):
        feature_visualization(demo_model, "features.3", [1], steps=1, preprocessing=Preprocessing("none", 3, None))


def test_the_views_name_a_layers_settings():
    """`described` (the card, the slide and visualize's closing line): nothing for the defaults,
    a preset by its name, other settings by what differs, and the ReLU rule where it was plain
    (a claim from before the setting records none)."""
    from sketchmine.regularizers import described

    assert described("fourier", settings("fourier", "default")) == ""
    assert described("pixel", settings("pixel", "yosinski3")) == ""  # the pixel default is Table 1's third row
    assert described("pixel", settings("pixel", "yosinski1")) == "regularisers yosinski1"
    assert described("fourier", settings("fourier", "none")) == "regularisers none"
    assert described("fourier", settings("fourier", {"lr": 0.2, "polish": 0.5})) == "regularisers lr 0.2, polish 0.5"
    assert described("pixel", settings("pixel", {"redirect_relu": False})) == "plain ReLU gradients"
    older = {k: v for k, v in settings("fourier", "default").items() if k != "redirect_relu"}
    assert described("fourier", older) == "plain ReLU gradients"
    assert described("fourier", {**older, "lr": 0.1}) == "regularisers lr 0.1, plain ReLU gradients"
