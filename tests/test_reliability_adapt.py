"""Do no harm (issue 29): adapting the shipped model to a scan (``--adapt``, Slicer's *Adapt to this scan*) keeps the
shipped model's result unless the scan itself, without a clean image, shows the adapted model is better by a margin."""

from __future__ import annotations

import numpy as np
import pytest
from reliability_tally import TALLY, report_at_end
from test_selfsupervised import one_thread  # noqa: F401 (a fixture: one intra-op thread)

import scripts.selfsupervised as selfsupervised
from scripts.data import load_slices, noisy_pairs
from scripts.engine import denoise_volume
from scripts.intensity import IntensityWindow
from scripts.metrics import image_metrics


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


@pytest.fixture
def adapted_models(monkeypatch):
    """Every model ``adapt_model`` adapts, whether it keeps it or not (a spy on the comparison; nothing is changed)."""
    seen = []
    compare = selfsupervised.estimated_risks

    def spy(models, *args, **kwargs):
        seen.append(models[1])
        return compare(models, *args, **kwargs)

    monkeypatch.setattr(selfsupervised, "estimated_risks", spy)
    return seen


def psnr(model, noisy, clean, window) -> float:
    return image_metrics(
        window.forward(denoise_volume(noisy, model, window, float_output=True)), window.forward(clean)
    )["psnr"]


@pytest.mark.slow
def test_adaptation_to_white_noise_keeps_the_shipped_model(embedded, shipped_model, adapted_models):
    """A real CT slice in HU with white Gaussian noise of sigma 60 HU (the attack's case): shipped model 39.1 dB,
    adapted for 30 steps 36.4 dB, worse than not adapting. The estimated errors on the held-out pixels show it (1.28e-4
    against 2.40e-4), so the shipped model's result comes back, exactly."""
    from scripts.image_io import read_image

    TALLY.no_harm += 1
    clean = read_image(embedded["test"][0]["image"]).array[0].astype(np.float32)
    noisy = clean + np.random.default_rng(0).normal(0.0, 60.0, clean.shape).astype(np.float32)
    window = IntensityWindow.from_data(noisy)
    model = shipped_model
    result = selfsupervised.adapt_model(model, noisy, window, seconds=600, max_steps=30)
    record = result.metadata["adaptation"]
    assert record["span"] == 0 and record["steps"] == 30
    assert psnr(adapted_models[0], noisy, clean, window) < psnr(model, noisy, clean, window) - 1.0  # the harm is real
    assert record["kept"] == "given" and record["adapted_risk"] > record["given_risk"], record
    shipped = denoise_volume(noisy, model, window, float_output=True)
    np.testing.assert_array_equal(denoise_volume(noisy, result, window, float_output=True), shipped)


@pytest.mark.slow
def test_adaptation_to_speckle_keeps_the_shipped_model(embedded, shipped_model, adapted_models):
    """Speckle (``x (1 + N(0, 0.3))``) on a real MR slice: 100 steps of adaptation cost bundle 0.11.0 0.35 dB
    (27.69 -> 27.35). With the variance per pixel the estimates are 7.8e-4 and 7.6e-4: too close to tell the two apart,
    so the margin keeps the shipped model. (At ``N(0, 0.2)`` adapting gains 0.11.0 0.19 dB, the estimates say so, 8.9e-4
    against 7.1e-4, and the adapted model is kept; for 0.10.0 it cost 0.15 dB there, and the previous check, SURE with
    one noise sigma for the slice where speckle's strength follows the signal, kept the adapted model.)"""
    TALLY.no_harm += 1
    window = IntensityWindow(0.0, 1.0)
    mr = load_slices([embedded["test"][1]], progress=False)[:1]
    pair = noisy_pairs(mr, "speckle:std=0.3", seed=0, crop=256)[0]
    clean, noisy = pair["label"][0], pair["image"][0]
    model = shipped_model
    result = selfsupervised.adapt_model(model, noisy, window, seconds=600, max_steps=100)
    record = result.metadata["adaptation"]
    assert record["span"] == 0, record  # speckle is independent from pixel to pixel
    assert psnr(adapted_models[0], noisy, clean, window) < psnr(model, noisy, clean, window)  # the harm is real
    assert record["kept"] == "given", record
    assert record["adapted_risk"] > (1 - selfsupervised.ADAPTED_RISK_MARGIN) * record["given_risk"], record
    assert result.network is model.network
