"""Noise models match their formulas statistically, are reproducible with a seed, and their specs round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.errors import NoiseSpecError
from scripts.noise import (
    DEFAULT_SETTINGS,
    NoiseMixture,
    NoiseModel,
    RandNoised,
    noise_sigma,
    parse_noise,
)

GREY = np.full((256, 256), 0.5, dtype=np.float32)  # mid-grey: no clipping for moderate noise


def noised(spec: str, image: np.ndarray = GREY, seed: int = 0) -> np.ndarray:
    model = parse_noise(spec)
    model.set_random_state(seed=seed)
    return model(image)


@pytest.mark.parametrize("factor, mean, std", [(0.07, 0, 1), (0.1, 0, 1), (0.05, 1, 2)])
def test_gaussian_matches_seed_formula(factor, mean, std):
    out = noised(f"gaussian:factor={factor},mean={mean},std={std}")
    expected_mean, expected_std = 0.5 + factor * mean, factor * std
    assert abs(out.mean() - expected_mean) < 0.005
    assert abs(out.std() - expected_std) / expected_std < 0.03


def test_gaussian_is_exactly_clip_x_plus_factor_normal():
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    out = noised("gaussian:factor=0.2,mean=1,std=2", image, seed=3)
    draws = np.random.RandomState(3).normal(1, 2, size=image.shape)
    np.testing.assert_allclose(out, np.clip(image + 0.2 * draws, 0, 1), atol=1e-6)


def test_poisson_is_exactly_clip_x_plus_factor_poisson_counts():
    image = np.full((128, 128), 0.1, dtype=np.float32)
    out = noised("poisson:factor=0.2,lam=5", image, seed=5)
    counts = np.random.RandomState(5).poisson(5, size=image.shape)
    np.testing.assert_allclose(out, np.clip(image + 0.2 * counts, 0, 1), atol=1e-6)
    unclipped = noised("poisson:factor=0.01,lam=5,clip=0", image)
    steps = np.round((unclipped - 0.1) / 0.01)
    assert np.allclose((unclipped - 0.1) / 0.01, steps, atol=1e-3), "increments are whole Poisson counts"
    assert abs(steps.mean() - 5) < 0.1 and abs(steps.var() - 5) < 0.3


def test_rician_has_the_magnitude_bias():
    # E|x + n| for x = 0 is sigma * sqrt(pi / 2) (Rayleigh), not 0: the bias that makes MR noise Rician.
    zero = np.zeros((256, 256), dtype=np.float32)
    out = noised("rician:std=0.05", zero)
    assert abs(out.mean() - 0.05 * np.sqrt(np.pi / 2)) < 0.002
    bright = noised("rician:std=0.05", GREY)
    assert abs(bright.mean() - 0.5) < 0.01 and abs(bright.std() - 0.05) < 0.003


def test_photon_counting_is_signal_dependent():
    image = np.concatenate([np.full((128, 256), 0.2), np.full((128, 256), 0.8)]).astype(np.float32)
    out = noised("photon:peak=200", image)
    for region, level in ((out[:128], 0.2), (out[128:], 0.8)):
        assert abs(region.mean() - level) < 0.005
        assert abs(region.var() - level / 200) / (level / 200) < 0.05  # Poisson: variance = mean / peak
        assert np.allclose(region * 200, np.round(region * 200), atol=1e-3), "values are counts / peak"


def test_speckle_is_multiplicative():
    image = np.concatenate([np.full((128, 256), 0.2), np.full((128, 256), 0.6)]).astype(np.float32)
    out = noised("speckle:std=0.2", image)
    assert abs(out[:128].std() - 0.2 * 0.2) < 0.003 and abs(out[128:].std() - 0.6 * 0.2) < 0.006
    assert np.all(noised("speckle:std=0.5", np.zeros((32, 32), np.float32)) == 0), "black stays black"


@pytest.mark.parametrize("width", [1.0, 2.0])
def test_correlated_noise_keeps_its_sigma_and_has_a_gaussian_autocorrelation(width):
    out = noised(f"correlated:std=0.1,width={width}") - 0.5
    assert abs(out.mean()) < 0.01 and abs(out.std() - 0.1) < 0.005
    for lag in (1, 2):
        measured = np.mean(
            [
                np.corrcoef(out[:, :-lag].ravel(), out[:, lag:].ravel())[0, 1],
                np.corrcoef(out[:-lag].ravel(), out[lag:].ravel())[0, 1],
            ]
        )
        # White noise blurred by a Gaussian of width w: correlation exp(-d^2 / (4 w^2)) at distance d (w >= 1 px).
        assert measured == pytest.approx(np.exp(-(lag**2) / (4 * width**2)), abs=0.04)
    white = noised("correlated:std=0.1,width=0") - 0.5
    assert abs(np.corrcoef(white[:, :-1].ravel(), white[:, 1:].ravel())[0, 1]) < 0.02


def test_correlated_noise_is_correlated_in_plane_only():
    volume = np.full((4, 128, 128), 0.5, dtype=np.float32)
    out = noised("correlated:std=0.1,width=1", volume) - 0.5
    assert abs(np.corrcoef(out[:-1].ravel(), out[1:].ravel())[0, 1]) < 0.05, "slices stay independent"


def test_mask_zeroes_the_requested_fraction():
    out = noised("mask:p=0.3", GREY)
    assert abs((out == 0).mean() - 0.3) < 0.01
    assert np.all((out == 0) | (out == 0.5))


def test_clipping_is_on_by_default_and_switchable():
    assert noised("gaussian:factor=0.5").min() >= 0 and noised("gaussian:factor=0.5").max() <= 1
    unclipped = noised("gaussian:factor=0.5,clip=0")
    assert unclipped.min() < 0 and unclipped.max() > 1


@pytest.mark.parametrize(
    "spec",
    [
        *DEFAULT_SETTINGS,
        "speckle:std=0.2",
        "correlated:std=0.1,width=1",
        "mask:p=0.3",
        "mix:gaussian:factor=0..0.5,mean=0,std=1|photon:peak=50..1000",
    ],
)
def test_seeded_runs_repeat_and_differ_between_seeds(spec):
    np.testing.assert_array_equal(noised(spec, seed=1), noised(spec, seed=1))
    assert not np.array_equal(noised(spec, seed=1), noised(spec, seed=2))


@pytest.mark.parametrize(
    "spec",
    [
        *DEFAULT_SETTINGS,
        "speckle:std=0.2",
        "correlated:std=0.1,width=1..2",
        "mask:p=0.3",
        "gaussian:factor=0.1,mean=0,std=1,clip=0",
        "mix:gaussian:factor=0..0.5,mean=0,std=1|rician:std=0.01..0.1",
        "mix:gaussian:factor=0..0.5,mean=0,std=1,weight=3|rician:std=0.01..0.1",
    ],
)
def test_spec_round_trips(spec):
    model = parse_noise(spec)
    assert parse_noise(model.spec).spec == model.spec
    assert parse_noise(spec).spec == parse_noise(" " + spec + " ").spec


def test_spec_fills_defaults_and_parses_ranges():
    assert parse_noise("gaussian").spec == "gaussian:factor=0.1,mean=0,std=1"
    assert parse_noise("photon:peak=50..1000").levels["peak"] == (50.0, 1000.0)


@pytest.mark.parametrize(
    "spec, words",
    [
        ("blur:sigma=1", "unknown noise model"),
        ("gaussian:sigma=1", "no parameter sigma"),
        ("gaussian:factor=abc", "not a number"),
        ("gaussian:factor", "NAME=VALUE"),
        ("gaussian:factor=-1", ">= 0"),
        ("poisson:lam=-1..2", "lam=-1.0 must be >= 0"),
        ("rician:std=-0.1", "std=-0.1 must be >= 0"),
        ("speckle:std=-0.1", "std=-0.1 must be >= 0"),
        ("correlated:width=-1", "width=-1.0 must be >= 0"),
        ("photon:peak=0", "> 0"),
        ("mask:p=2", "[0, 1]"),
        ("gaussian:factor=0.5..0.1", "LOW <= HIGH"),
        ("gaussian:clip=maybe", "0 or 1"),
        ("", "non-empty"),
        ("mix:mix:gaussian", "cannot contain another mixture"),
        ("mix:gaussian:weight=many|photon", "must be a number"),
        ("mix:gaussian:weight=-1|photon", "non-negative"),
        ("gaussian:factor=0.1,weight=2", "no parameter weight"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, words):
    with pytest.raises(NoiseSpecError) as error:
        parse_noise(spec)
    assert words in str(error.value)


def test_only_the_levels_that_must_be_non_negative_are_checked():
    assert parse_noise("gaussian:factor=0.1,mean=-1,std=1").levels["mean"] == -1  # a negative offset is meaningful


def test_mixture_draws_members_and_levels_per_sample():
    mixture = parse_noise("mix:gaussian:factor=0.01..0.3,mean=0,std=1|photon:peak=20..2000")
    assert isinstance(mixture, NoiseMixture)
    mixture.set_random_state(seed=0)
    chosen, stds = set(), []
    for _ in range(40):
        out = mixture(GREY)
        chosen.add(mixture.chosen.NAME)
        stds.append(float(out.std()))
    assert chosen == {"gaussian", "photon"}
    assert max(stds) > 4 * min(stds), "levels vary from sample to sample"


def test_mixture_weights_set_how_often_each_member_is_drawn():
    mixture = parse_noise("mix:gaussian:factor=0.1,weight=3|photon:peak=200")
    np.testing.assert_allclose(mixture.weights, [0.75, 0.25])
    mixture.set_random_state(seed=0)
    draws = []
    for _ in range(400):
        mixture(GREY)
        draws.append(mixture.chosen.NAME == "gaussian")
    assert 0.68 < np.mean(draws) < 0.82
    uniform = parse_noise("mix:gaussian:factor=0.1|photon:peak=200")
    assert "weight" not in uniform.spec and parse_noise(mixture.spec).spec == mixture.spec


def test_torch_in_torch_out_and_dictionary_version():
    tensor = torch.full((1, 32, 32), 0.5)
    out = parse_noise("gaussian:factor=0.1")(tensor)
    assert isinstance(out, torch.Tensor) and out.shape == tensor.shape and out.dtype == torch.float32
    transform = RandNoised(keys="image", noise="gaussian:factor=0.1").set_random_state(seed=0)
    data = transform({"image": GREY.copy(), "label": GREY})
    assert data["image"].std() > 0.05 and data["label"] is GREY


def test_true_sigma_for_baselines():
    assert noise_sigma("gaussian:factor=0.1,mean=1,std=2") == pytest.approx(0.2)
    assert noise_sigma("poisson:factor=0.2,lam=5") == pytest.approx(0.2 * np.sqrt(5))
    assert noise_sigma("photon:peak=200") == pytest.approx(np.sqrt(0.5 / 200))
    assert noise_sigma("correlated:std=0.1,width=2") == pytest.approx(0.1)
    assert noise_sigma("gaussian:factor=0..0.5") is None


def test_registry_lists_every_model():
    assert set(NoiseModel.REGISTRY) == {"gaussian", "poisson", "rician", "photon", "speckle", "correlated", "mask"}
