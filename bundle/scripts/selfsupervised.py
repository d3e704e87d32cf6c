"""Self-supervised denoising from noisy images alone: the blind-spot objective (Noise2Void / Noise2Self family).

A few % of the pixels are hidden: each is replaced by a random unhidden neighbour, the network sees the result, and
the loss compares its output with the original noisy values at the hidden pixels only. Since the noise is
independent from pixel to pixel and a hidden pixel's own value is nowhere in the input, the best prediction is the
clean value, so noisy images are enough to learn from.

- :class:`BlindSpotMask` / :class:`BlindSpotMaskd`: the masking, a MONAI randomizable transform and its dict version.
- :class:`BlindSpotLoss`: the mean squared error over the hidden pixels (optionally away from the clipping bounds).
- :class:`BlindSpotPosteriorLoss`: the same with a predicted prior variance, for a per-pixel blend of prediction and
  noisy pixel at inference (:func:`scripts.noise_level.posterior_mean`).
- :class:`SureInferer`, :class:`SureLoss`: Stein's unbiased risk estimate of the squared error to the clean image from
  the noisy one and the noise sigma, which :func:`adapt_model` uses to keep an adaptation only where it helps.
- :func:`noisy_only`: a training set with noise applied once at load time and the clean images dropped.
- :func:`adapt_model`: fine-tune a copy of a loaded model on one user's noisy volume for a bounded time, with a
  single-pixel or block blind spot chosen from the kind of noise.

Only what adapt-to-this-scan and ``configs/train_selfsupervised.yaml`` (the shipped self-supervised model) use lives
here; the objectives that lost (Recorrupted-to-Recorrupted, training on SURE, the architectural blind spot) and the
checkpoint surgery between them are in the repository's ``research/`` folder, which the bundle does not ship.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage
from torch import nn

from .data import center_crop
from .engine import LoadedModel, ProgressCallback, denoise_volume
from .errors import CancelledError, InvalidImageError
from .intensity import IntensityWindow
from .noise import parse_noise
from .noise_level import (
    LOG_PRIOR_BOUND,
    SliceNoiseSigma,
    estimate_noise_level,
    noise_scale_ratio,
    noise_variance_map,
    residual_correlation,
    slice_noise_sigma,
)
from .slices import check_volume, evenly_spaced, slice_stack

#: Rounds of redrawing a hidden pixel's source before giving up on hiding that pixel (it then stays visible).
_SOURCE_DRAWS = 32
#: Residual correlation between neighbouring pixels above which :func:`adapt_model` treats the noise as correlated.
CORRELATED_RESIDUAL = 0.2
#: Or noise scale ratio (:func:`scripts.noise_level.noise_scale_ratio`) above which it does: white noise measured at
#: most 2.4, blurred noise of sigma 0.1 and width 0.7-1 px at least 2.4 (research/experiments.md, session 7).
CORRELATED_SCALE_RATIO = 2.5
#: Blind-spot span for correlated noise: blurred noise of width 1 px is correlated 0.02 four pixels away.
CORRELATED_SPAN = 3
#: Independent block layouts :func:`estimated_risks` scores each slice on, for enough learnt pixels held out.
BLOCK_DRAWS = 8
#: Longest adaptation :func:`adapt_model` accepts (an hour, as Slicer's setting): beyond it a typo such as 1e9 would
#: run until killed.
MAX_ADAPT_SECONDS = 3600.0
#: Fraction of pixel positions :func:`adapt_model` never learns from; both models are judged there alone.
HELD_OUT_FRACTION = 0.25
#: The adapted model is kept only when its estimated error is lower than the given model's by more than this
#: fraction (0.22 dB): noise the shipped model was trained for leaves adaptation little to gain and the estimate
#: cannot tell such small differences (MR with speckle: adapted 0.15 dB worse, estimated 4 % better), while correlated
#: noise gains 2-9 dB (estimated 23 % better).
ADAPTED_RISK_MARGIN = 0.05


class BlindSpotMask(RandomizableTransform):
    """Hide a random ``ratio`` of the pixels of one channel, each replaced by a random neighbour that is not hidden.

    Neighbours are drawn uniformly from the ``(2 radius + 1)^2`` window around the pixel, excluding the pixel itself
    and other hidden pixels, so no hidden pixel's own value appears anywhere in the output. With ``span > 0`` the
    whole ``(2 span + 1)^2`` block around each drawn pixel is hidden the same way (structured blind spot, for noise
    correlated over a few pixels: structN2V, Broaddus 2020), and only the drawn centres are learnt from. The drawn
    positions are kept after each call: ``rows, cols`` hidden, ``source_rows, source_cols`` their replacements,
    ``target_rows, target_cols`` the pixels the loss sees.

    Args:
        ratio: fraction of pixels drawn (a few %; with a span, each hides a block, so fewer).
        radius: neighbourhood radius in pixels (> ``span``).
        channel: the channel to hide pixels in (the denoised one); default the centre channel, as for 2.5D input.
        span: half-width of the hidden block around each drawn pixel (0: the pixel alone, Noise2Void).

    Input ``(C, H, W)`` NumPy array or tensor; returns ``(masked image of the same type and shape, mask (1, H, W)
    float32 with 1 at the target pixels)``. A tensor input keeps its autograd graph.
    """

    def __init__(self, ratio: float = 0.03, radius: int = 2, channel: int | None = None, span: int = 0) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        if not 0 < ratio <= 0.5:
            raise ValueError(f"blind-spot ratio {ratio} must be in (0, 0.5]: a few % of the pixels")
        if radius < 1:
            raise ValueError(f"blind-spot radius {radius} must be at least 1 pixel")
        if not 0 <= span < radius:
            raise ValueError(f"blind-spot span {span} must be in [0, radius {radius}): sources lie outside the block")
        self.ratio, self.radius, self.channel, self.span = ratio, radius, channel, span
        empty = np.zeros(0, dtype=np.int64)
        self.rows = self.cols = self.source_rows = self.source_cols = self.target_rows = self.target_cols = empty

    def randomize(self, data: tuple[int, int]) -> None:
        """Draw the hidden pixels and their sources for an image of ``data = (H, W)`` pixels."""
        height, width = data
        count = max(1, round(self.ratio * height * width))
        centres = self.R.choice(height * width, size=min(count, height * width - 1), replace=False)
        hidden = np.zeros((height, width), dtype=bool)
        hidden.flat[centres] = True
        block = np.ones((2 * self.span + 1,) * 2, dtype=bool)
        if self.span:
            grown = ndimage.binary_dilation(hidden, block)
            flat = np.concatenate([centres, np.flatnonzero(grown & ~hidden)])
            hidden = grown
        else:
            flat = centres
        hidden = hidden.ravel()
        rows, cols = np.divmod(flat, width)
        source_rows, source_cols = rows.copy(), cols.copy()
        pending = np.ones(len(flat), dtype=bool)
        for _ in range(_SOURCE_DRAWS):
            index = np.flatnonzero(pending)
            if not len(index):
                break
            r = rows[index] + self.R.randint(-self.radius, self.radius + 1, len(index))
            c = cols[index] + self.R.randint(-self.radius, self.radius + 1, len(index))
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            ok = inside.copy()
            ok[inside] = ~hidden[r[inside] * width + c[inside]]  # excludes the pixel itself: it is hidden too
            source_rows[index[ok]], source_cols[index[ok]] = r[ok], c[ok]
            pending[index[ok]] = False
        found = ~pending  # a pixel whose neighbours are all hidden stays visible, and its block out of the loss
        self.rows, self.cols = rows[found], cols[found]
        self.source_rows, self.source_cols = source_rows[found], source_cols[found]
        visible = np.zeros((height, width), dtype=bool)
        visible.flat[flat[pending]] = True
        if self.span:
            visible = ndimage.binary_dilation(visible, block)
        targets = centres[~visible.flat[centres]]
        self.target_rows, self.target_cols = np.divmod(targets, width)

    def __call__(self, img: np.ndarray | torch.Tensor, randomize: bool = True):
        height, width = img.shape[-2:]
        if height * width < 2:
            raise InvalidImageError(f"an image of shape {tuple(img.shape)} has no neighbours to hide a pixel behind")
        if randomize:
            self.randomize((height, width))
        channel = img.shape[0] // 2 if self.channel is None else self.channel
        masked = img.clone() if isinstance(img, torch.Tensor) else np.array(img, copy=True)
        masked[channel, self.rows, self.cols] = img[channel, self.source_rows, self.source_cols]
        mask = np.zeros((1, height, width), dtype=np.float32)
        mask[0, self.target_rows, self.target_cols] = 1.0
        if isinstance(img, torch.Tensor):
            return masked, torch.as_tensor(mask, device=img.device)
        return masked, mask


class BlindSpotMaskd(RandomizableTransform, MapTransform):
    """Dictionary version: hides pixels of ``keys`` and writes ``target_key`` = ``(2, H, W)``: the original noisy
    channel (the target) and the mask, which :class:`BlindSpotLoss` takes as its target, so MONAI's
    ``SupervisedTrainer`` trains the blind-spot objective unchanged (``image`` -> network, ``label`` -> loss).
    With ``sigma_key`` (the item's noise sigma, e.g. from :func:`noisy_only`) a third channel holds that sigma, for
    :class:`BlindSpotPosteriorLoss`."""

    def __init__(
        self,
        keys: KeysCollection,
        target_key: str = "label",
        ratio: float = 0.03,
        radius: int = 2,
        channel: int | None = None,
        span: int = 0,
        sigma_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        self.target_key, self.sigma_key = target_key, sigma_key
        self.mask = BlindSpotMask(ratio, radius, channel, span)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> BlindSpotMaskd:
        super().set_random_state(seed, state)
        self.mask.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            channel = image.shape[0] // 2 if self.mask.channel is None else self.mask.channel
            d[key], mask = self.mask(image)
            target = image[channel : channel + 1]
            is_tensor = isinstance(image, torch.Tensor)
            channels = [target, mask.to(target.dtype) if is_tensor else mask.astype(target.dtype)]
            if self.sigma_key is not None:
                channels.append((torch.full_like if is_tensor else np.full_like)(target, float(d[self.sigma_key])))
            d[self.target_key] = (torch.cat if is_tensor else np.concatenate)(channels)
        return d


class BlindSpotLoss(nn.Module):
    """Mean squared error over the hidden pixels only, optionally away from the clipping bounds.

    ``forward(pred (B, 1, H, W), target (B, 2 or 3, H, W))``: ``target[:, 0]`` is the original noisy image,
    ``target[:, 1]`` the mask from :class:`BlindSpotMaskd` (``target[:, 2]``, the noise sigma, is not used here). A
    batch without hidden pixels gives 0 (with a gradient of 0).

    Args:
        margin: leave out pixels whose prediction lies within ``margin`` of 0 or 1. Noise clipped to [0, 1] is not
            zero-mean near the bounds (a black pixel's noisy values average above 0), so plain squared errors teach a
            lighter black and a darker white; about two noise sigmas removes the bias. The choice looks at the
            prediction, which never sees the pixel's own noise, so it does not bias the pixels that stay in; what is
            left out is not learnt (for fine-tuning a model that knows those regions, as :func:`adapt_model` does).
    """

    def __init__(self, margin: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= margin < 0.5:
            raise ValueError(f"blind-spot loss margin {margin} must be in [0, 0.5): a fraction of the [0, 1] range")
        self.margin = margin

    def hidden(self, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy (B, 1, H, W), mask (B, 1, H, W))``: the noisy target and the hidden pixels the loss counts."""
        noisy, mask = target[:, :1], target[:, 1:2]
        if self.margin:
            mask = mask * _away_from_bounds(pred, self.margin)
        return noisy, mask

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noisy, mask = self.hidden(pred, target)
        return masked_mean((pred - noisy) ** 2, mask)


class SureInferer(Inferer):
    """The network's output and an estimate of its divergence per pixel, for :class:`SureLoss`.

    ``inputs (B, C, H, W)`` -> ``(B, 2, H, W)``: channel 0 the output ``f(y)``, channel 1 ``b * (J^T b)`` with
    ``b ~ N(0, 1)`` per pixel and ``J`` the Jacobian of ``f`` with respect to the centre input channel, whose mean over
    a patch is an unbiased estimate of ``div f / (H W)`` (Hutchinson; one probe per patch, its noise averages out over
    patches and steps). ``J^T b`` is one backward pass (kept in the graph while training). Why not the finite
    difference ``(f(y + eps b) - f(y)) / eps`` of Ramani et al. (2008): a trained network learns responses that vary
    on the scale of ``eps`` and drives that estimate, and the loss, far below any real risk (measured: training loss
    -75 within 10 epochs); the exact product cannot be gamed.

    A two-channel network (mean and log prior variance, :class:`BlindSpotPosteriorLoss`) is scored on its blend with
    the noisy pixel (:func:`posterior_blend`), the output the engine gives, so SURE fine-tunes what users get.
    At inference the engine uses the network alone; this inferer is for training and validation.

    ``probe_mask`` (broadcastable to the output, 1 where to probe) draws ``b`` at those pixels only: their
    divergence estimates then carry no variance from the pixels left out (for scoring a sparse set of pixels).
    """

    def __init__(self, probe_mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.noise_sigma = SliceNoiseSigma()
        self.probe_mask = probe_mask

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        centre, training = inputs.shape[1] // 2, torch.is_grad_enabled() and getattr(network, "training", False)
        with torch.enable_grad():  # validation runs under no_grad
            noisy = inputs[:, centre : centre + 1].detach().requires_grad_(True)
            given = torch.cat([inputs[:, :centre], noisy, inputs[:, centre + 1 :]], dim=1)
            output = network(given, *args, **kwargs)
            if output.shape[1] == 2:
                output = posterior_blend(noisy, output, self.noise_sigma(noisy.detach()))
            probe = torch.randn_like(output)
            if self.probe_mask is not None:
                probe = probe * self.probe_mask.to(probe)
            (transposed,) = torch.autograd.grad(output, noisy, probe, create_graph=training)
        result = torch.cat([output, probe * transposed], dim=1)
        return result if training else result.detach()


def posterior_blend(noisy: torch.Tensor, prediction: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """:func:`scripts.noise_level.posterior_mean` in torch, batched and differentiable: ``noisy (B, 1, H, W)``,
    ``prediction (B, 2, H, W)`` (mean, log prior variance), ``sigma (B,)``; returns ``(B, 1, H, W)``."""
    mean, prior = prediction[:, :1], prediction[:, 1:2].clamp(-LOG_PRIOR_BOUND, LOG_PRIOR_BOUND).exp()
    return mean + prior / (prior + sigma[:, None, None, None] ** 2) * (noisy - mean)


class SureLoss(nn.Module):
    """Stein's unbiased risk estimate of each sample's mean squared error to the clean image, divided by its noise
    variance: ``mean((f(y) - y)^2) / sigma^2 - 1 + 2 div f / N`` (Stein 1981; as a training loss, Soltanayev and Chun
    2018). For Gaussian noise of sigma ``sigma`` its expectation is the normalised MSE to the clean image, which is
    never read: the loss needs the noisy image and sigma only.

    Dividing by the variance weighs lightly and heavily noised patches alike (as :class:`scripts.training.PSNRLoss`
    does for supervised training). Noise clipped at 0 and 1 is not Gaussian there, so near the bounds the estimate is
    biased (towards the clipped noise's mean: a black background's noisy values average 0.4 sigma).

    Args:
        margin_sigmas: leave out pixels whose output lies within ``margin_sigmas`` noise sigmas of 0 or 1, where the
            noise was clipped (at 2 sigmas, 2 % of a pixel's noisy values are), as ``BlindSpotLoss(margin=...)`` does;
            on a real CT slice with black air (sigma 0.05) the bias falls from 0.19 to 0.034 at 2 sigmas, 0.025 at 3.
            A sample with no pixel left adds 0: with heavy noise (e.g. sigma 0.25 at 2 sigmas) nothing is learnt.

    ``forward(pred (B, 2, H, W) from SureInferer, target (B, 2, H, W): the noisy image and a channel filled with its
    sigma)``; returns a scalar (lower is better: 1 for returning the noisy input, ``10^(-gain / 10)`` for a denoiser
    that gains ``gain`` dB).
    """

    #: Floor of the per-sample sigma: a flat slice measures almost no noise and would take over.
    MIN_SIGMA = 0.01

    def __init__(self, margin_sigmas: float = 0.0) -> None:
        super().__init__()
        if margin_sigmas < 0.0:
            raise ValueError(f"SURE margin {margin_sigmas} must be at least 0 noise sigmas")
        self.margin_sigmas = margin_sigmas

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] != 2 or target.shape[1] != 2:
            raise ValueError(
                f"the SURE loss needs (output, divergence) from SureInferer and (noisy image, sigma) as target, "
                f"not {pred.shape[1]} and {target.shape[1]} channels"
            )
        denoised, divergence = pred[:, 0].flatten(1), pred[:, 1].flatten(1)
        noisy, sigma = target[:, 0].flatten(1), target[:, 1].flatten(1)[:, 0].clamp(min=self.MIN_SIGMA)
        per_pixel = (denoised - noisy) ** 2 / sigma[:, None] ** 2 - 1.0 + 2.0 * divergence
        if not self.margin_sigmas:
            return per_pixel.mean()
        kept = _away_from_bounds(denoised, self.margin_sigmas * sigma[:, None]).to(per_pixel.dtype)
        risk = (kept * per_pixel).sum(1) / kept.sum(1).clamp(min=1.0)
        return risk.mean()


def _away_from_bounds(level: torch.Tensor, margin: float | torch.Tensor) -> torch.Tensor:
    """Where ``level`` (detached: the choice is not learnt) lies more than ``margin`` inside (0, 1)."""
    level = level.detach()
    return (level > margin) & (level < 1.0 - margin)


def masked_mean(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``errors`` over the hidden pixels (``mask`` 1); 0, with a gradient of 0, when none is hidden."""
    return (mask * errors).sum() / mask.sum().clamp(min=1.0)


class BlindSpotPosteriorLoss(nn.Module):
    """Negative log-likelihood of each hidden pixel's noisy value under ``N(mean, prior + sigma^2)``: the network
    predicts, from the context alone, the clean value's mean and (as a log) its variance ``prior``; the noise adds
    ``sigma^2``. Laine et al. (2019), Gaussian case.

    With both, the engine combines the prediction and the pixel's own noisy value per pixel
    (:func:`scripts.noise_level.posterior_mean`): where the context pins the value down (flat tissue, small
    ``prior``) the prediction wins; at an edge (large ``prior``) more of the noisy pixel is kept. A single-output
    blind-spot network can only be blended with one share per slice, and over-smooths light noise.

    ``forward(pred (B, 2, H, W), target (B, 3, H, W))``: ``pred[:, 0]`` the mean, ``pred[:, 1]`` the log prior
    variance; ``target`` as for :class:`BlindSpotLoss` with ``sigma_key`` (noisy image, mask, sigma), or
    ``(B, 2, H, W)`` (noisy image, sigma) for a network with an architectural blind spot
    (``research.blind_spot_network.BlindSpotNetwork``), where every pixel is a target. A squared error counts relative
    to the predicted variance, so lightly and heavily noised slices weigh alike (as with
    ``research.blind_spot_losses.NormalizedBlindSpotLoss``).
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape[1] != 2 or target.shape[1] not in (2, 3):
            raise ValueError(
                f"the posterior blind-spot loss needs a 2-channel prediction (mean, log prior variance), not "
                f"{pred.shape[1]}, and a target of (noisy, mask, sigma) or (noisy, sigma) ({target.shape[1]} channels "
                "given)"
            )
        mean, log_prior = pred[:, :1], pred[:, 1:2].clamp(-LOG_PRIOR_BOUND, LOG_PRIOR_BOUND)
        noisy, sigma = target[:, :1], target[:, -1:].clamp(min=1e-3)
        mask = target[:, 1:2] if target.shape[1] == 3 else torch.ones_like(noisy)
        variance = log_prior.exp() + sigma**2
        errors = 0.5 * ((noisy - mean) ** 2 / variance + variance.log())
        return masked_mean(errors, mask)


def noisy_only(slices: Sequence[dict], noise: str, seed: int = 0, crop: int | None = None) -> list[dict]:
    """A noisy-only data set: each clean ``label`` is read once, noised once (one fixed realisation per slice, as a
    real scan has) and dropped; items keep their other keys and get ``image`` (float32 (1, H, W) in [0, 1]) and
    ``sigma``, the noise sigma estimated from the noisy image alone (:func:`scripts.noise_level.slice_noise_sigma`).

    ``crop`` takes the central window of each slice (for validation).
    """
    model = parse_noise(noise)
    model.set_random_state(seed=seed)
    noisy = []
    for item in slices:
        clean = np.ascontiguousarray(center_crop(np.asarray(item["label"]), crop))
        image = model(clean)
        sigma = slice_noise_sigma(image[len(image) // 2]) if min(image.shape[-2:]) >= 4 else 0.0
        noisy.append(
            {**{k: v for k, v in item.items() if k != "label"}, "image": image, "noise": model.spec, "sigma": sigma}
        )
    return noisy


def blind_spot_pairs(
    items: Sequence[dict], seed: int = 0, ratio: float = 0.03, radius: int = 2, sigma_key: str | None = None
) -> list[dict]:
    """Fixed blind-spot inputs and targets (drawn once from ``seed``) for a validation that needs no clean image;
    ``sigma_key`` as for :class:`BlindSpotMaskd`."""
    masking = BlindSpotMaskd("image", ratio=ratio, radius=radius, sigma_key=sigma_key).set_random_state(seed=seed)
    return [masking(item) for item in items]


def adapt_model(
    model: LoadedModel,
    volume: np.ndarray,
    window: IntensityWindow | None = None,
    seconds: float = 60.0,
    progress: ProgressCallback | None = None,
    axis: int = 0,
    patch_size: int = 64,
    batch_size: int = 8,
    learning_rate: float = 1e-4,
    span: int | None = None,
    ratio: float | None = None,
    margin: float | None = None,
    max_steps: int | None = None,
    seed: int = 0,
) -> LoadedModel:
    """Fine-tune a copy of ``model`` on one noisy volume with the blind-spot objective for ``seconds``; then denoise
    the volume with the returned model (:func:`scripts.engine.denoise_volume`, same ``window`` and ``axis``).

    The blind spot fits the scan's noise: if, on a few slices, the model's residual is correlated between
    neighbouring pixels (:func:`scripts.noise_level.residual_correlation` above :data:`CORRELATED_RESIDUAL`) or the
    noise is much stronger one wavelet scale coarser than at the finest (:func:`scripts.noise_level.noise_scale_ratio`
    above :data:`CORRELATED_SCALE_RATIO`), the noise is correlated over pixels and whole blocks are hidden (``span``
    :data:`CORRELATED_SPAN`); otherwise single pixels. Either test alone misses cases the other catches: a model
    that removes part of correlated noise leaves a residual with little correlation, and anatomy or an image's own
    grain can fill the finest wavelet scale.

    Args:
        model: from :func:`scripts.engine.load_bundle`; never modified.
        volume: K x J x I (or J x I) in native units; never modified.
        window: native units -> [0, 1]; default :meth:`IntensityWindow.from_data`, as the engine uses.
        seconds: time budget, from the call to the end of the step that crosses it.
        progress: ``progress(elapsed_ms, total_ms)`` after each step; returning ``False`` cancels (raises
            :class:`CancelledError`).
        axis: slicing axis, as for denoising.
        patch_size: side of the random training patches (smaller slices are used whole).
        batch_size: patches per step.
        learning_rate: Adam's step size; small, so the shipped model is adapted rather than retrained.
        span: half-width of the hidden block around each learnt pixel (:class:`BlindSpotMask`); default: chosen from
            the residual's correlation as above.
        ratio: fraction of learnt pixels per patch; default 3 % for single pixels, with a span as many blocks as
            cover about a fifth of the patch.
        margin: :class:`BlindSpotLoss` leaves out pixels this close to 0 or 1, where clipped noise is biased;
            default twice the scan's estimated noise sigma (:func:`scripts.noise_level.estimate_noise_level`).
        max_steps: also stop after this many steps (reproducible work regardless of machine load).

    Do no harm: a random :data:`HELD_OUT_FRACTION` of the pixel positions is never a target of the adaptation;
    there both models' squared error on the scan is estimated from the scan alone (:func:`estimated_risks`), and the
    adapted model is kept only when its estimate is lower by more than :data:`ADAPTED_RISK_MARGIN`; otherwise the
    given model comes back unchanged (``metadata["adaptation"]["kept"]`` says which).

    Returns:
        A :class:`LoadedModel` in eval mode whose ``metadata["adaptation"]`` records steps, seconds, the last
        losses, the slowest step, the residual correlation, the noise scale ratio, span, margin, both models'
        estimated risks and which model was ``kept`` (``"adapted"`` or ``"given"``).
    """
    start = time.monotonic()
    volume = check_volume(volume, axis)
    if not 0 < seconds <= MAX_ADAPT_SECONDS:
        raise InvalidImageError(
            f"the adaptation time must be more than 0 and at most {MAX_ADAPT_SECONDS:g} seconds, got {seconds}"
        )
    window = window or IntensityWindow.from_data(volume)
    stack = slice_stack(volume, axis)
    correlation, scale_ratio = _noise_correlation(model, stack, window)
    if span is None:
        correlated = correlation > CORRELATED_RESIDUAL or scale_ratio > CORRELATED_SCALE_RATIO
        span = CORRELATED_SPAN if correlated else 0
    if ratio is None:
        ratio = 0.03 if span == 0 else 0.2 / (2 * span + 1) ** 2
    if margin is None:
        margin = min(0.25, 2 * estimate_noise_level(volume, window, axis).sigma_scaled)
    _, height, width = stack.shape
    patch_h, patch_w = min(patch_size, height), min(patch_size, width)
    offsets = np.arange(-model.context, model.context + 1)
    rng = np.random.RandomState(seed)
    held_out = np.random.RandomState(seed + 1).rand(height, width) < HELD_OUT_FRACTION
    masking = BlindSpotMaskd("image", ratio=ratio, radius=span + 2, span=span).set_random_state(state=rng)
    network = copy.deepcopy(model.network).to(model.device).train()
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            # Keep the statistics learnt over the training set: re-estimated from one scan's small patches they drift
            # within a few steps and cost several dB (measured on speckle noise, research/experiments.md).
            module.eval()
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    loss_function = BlindSpotLoss(margin)
    losses, slowest, steps = [], 0.0, 0
    elapsed = time.monotonic() - start
    while steps == 0 or (elapsed < seconds and steps != max_steps):  # at least one step, then until the budget
        step_start = time.monotonic()
        batch = []
        for _ in range(batch_size):
            patch, learnt = _random_patch(stack, offsets, patch_h, patch_w, window, rng, ~held_out)
            item = masking({"image": patch})
            item["label"][1] *= learnt  # held-out pixels are never targets
            batch.append(item)
        inputs = torch.from_numpy(np.stack([item["image"] for item in batch])).to(model.device)
        targets = torch.from_numpy(np.stack([item["label"] for item in batch])).to(model.device)
        optimizer.zero_grad()
        with torch.autocast(model.device.type, model.precision, enabled=model.precision != torch.float32):
            prediction = network(inputs)  # in the model's precision: bfloat16 takes about twice the steps per second
        loss = loss_function(prediction.float(), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        steps += 1
        slowest = max(slowest, time.monotonic() - step_start)
        elapsed = time.monotonic() - start
        if progress is not None and progress(int(min(elapsed, seconds) * 1000), int(seconds * 1000)) is False:
            raise CancelledError(f"adaptation cancelled after {elapsed:.1f} s ({steps} steps); the model is unchanged")
    # The adapted network still sees each pixel's own value when it denoises (it began as the given model), so the
    # engine's blind-spot blend, made for networks that never see it, stays as the given model had it.
    adapted = dataclasses.replace(model, network=network.eval())
    given_risk, adapted_risk = estimated_risks([model, adapted], stack, window, span, margin, seed, held_out=held_out)
    record = {
        "steps": steps,
        "seconds": elapsed,
        "loss": float(np.mean(losses[-10:])),
        "slowest_step": slowest,
        "residual_correlation": correlation,
        "noise_scale_ratio": scale_ratio,
        "span": span,
        "margin": margin,
        "given_risk": given_risk,
        "adapted_risk": adapted_risk,
        "kept": "adapted" if adapted_risk < given_risk - ADAPTED_RISK_MARGIN * abs(given_risk) else "given",
    }
    kept = adapted if record["kept"] == "adapted" else model
    return dataclasses.replace(kept, metadata={**model.metadata, "adaptation": record})


def estimated_risks(
    models: Sequence[LoadedModel],
    stack: np.ndarray,
    window: IntensityWindow,
    span: int = 0,
    margin: float = 0.0,
    seed: int = 0,
    samples: int = 2,
    held_out: np.ndarray | None = None,
    probes: int = 2,
) -> list[float]:
    """Each model's mean squared error to the clean scan on the [0, 1] scale, estimated from the noisy scan alone
    (lower is better), on up to ``samples`` evenly spaced whole slices of ``stack`` (K x J x I, native units) with
    their neighbours, at the pixel positions ``held_out`` (J x I bool; default all): a model adapted elsewhere has
    learnt nothing of the noise there. Harm shows where the adaptation learnt little, such as black air, so no region
    is left out.

    Noise independent from pixel to pixel (``span`` 0): Stein's unbiased risk estimate of the output the model gives,
    each pixel's own noise included, ``(f(y) - y)^2 - v + 2 v df/dy`` per pixel (:class:`SureInferer`'s divergence,
    probed at the ``held_out`` pixels only, averaged over ``probes`` probes, the same for every model), with the
    noise variance ``v`` per pixel as a function of the given (first) model's output
    (:func:`scripts.noise_level.noise_variance_map`), so noise whose strength follows the signal, such as speckle, is
    weighed where it is. Measured (CT, white noise of 60 HU): 1.28e-4 and 2.40e-4 for models whose true errors were
    1.23e-4 and 2.29e-4 (39.1 and 36.4 dB); MR with speckle of 0.2: 8.0e-4 and 7.7e-4 for 1.28e-3 and 1.32e-3 (too
    close to rank: :data:`ADAPTED_RISK_MARGIN`). Not a blind-spot loss: that scores a prediction of each hidden pixel
    from its neighbours, which the adaptation trains and the engine's output is not (measured on the same CT: it
    prefers the model 2.9 dB worse).
    Noise correlated over pixels (``span`` > 0), where SURE's per-pixel form does not hold: the blind-spot loss
    (:class:`BlindSpotLoss` with ``margin``) on blocks hidden as the adaptation hides them, drawn from their own seed:
    a hidden pixel's noise is independent of all the model sees, so the loss is the model's error there plus the
    noise variance. It scores predictions of hidden pixels, which the adapted model learnt and the shipped one did
    not, so it leans towards adapting; the adaptation only hides blocks where the noise is correlated, which the
    shipped model was not trained for.
    """
    depth, height, width = stack.shape
    context = models[0].context
    held_out = np.ones((height, width), bool) if held_out is None else held_out
    indices = evenly_spaced(depth, samples)
    rng = np.random.RandomState(seed)
    probing = SureInferer(probe_mask=torch.from_numpy(held_out))
    masking = BlindSpotMask(ratio=0.2 / (2 * span + 1) ** 2, radius=span + 2, span=span).set_random_state(state=rng)
    risks = np.zeros(len(models))
    for index in indices:
        slices = window.forward(stack[np.clip(index + np.arange(-context, context + 1), 0, depth - 1)])
        noisy = torch.from_numpy(np.ascontiguousarray(slices[context]))
        if span == 0:
            probe_seed, variance = rng.randint(2**31), None
            for which, model in enumerate(models):
                scored = 0.0
                for probe in range(probes):  # the same probes for every model: their difference counts
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(probe_seed + probe)
                        scored += probing(torch.from_numpy(slices[None]).to(model.device), model.network)[0].cpu()
                output, divergence = scored[0] / probes, scored[1] / probes
                if variance is None:
                    variance = torch.from_numpy(noise_variance_map(slices[context], output.numpy()))
                per_pixel = (output - noisy) ** 2 - variance + 2 * variance * divergence
                risks[which] += float(per_pixel[torch.from_numpy(held_out)].mean())
        else:
            masked, mask = zip(*(masking(slices) for _ in range(BLOCK_DRAWS)), strict=True)
            target = torch.cat(
                [noisy.expand(BLOCK_DRAWS, 1, height, width), torch.from_numpy(np.stack(mask) * held_out)], 1
            )
            for which, model in enumerate(models):
                with torch.inference_mode():  # one layout at a time: a whole slice's activations each
                    prediction = torch.cat(
                        [model.predict(torch.from_numpy(m[None]).to(model.device))[:, :1].cpu() for m in masked]
                    )
                risks[which] += float(BlindSpotLoss(margin)(prediction, target))
    return [float(risk) for risk in risks / len(indices)]


def _noise_correlation(
    model: LoadedModel, stack: np.ndarray, window: IntensityWindow, samples: int = 4
) -> tuple[float, float]:
    """Medians of :func:`scripts.noise_level.residual_correlation` of ``model`` and of
    :func:`scripts.noise_level.noise_scale_ratio` on up to ``samples`` evenly spaced slices of ``stack`` (K x J x I,
    native units), each denoised with its real neighbours."""
    depth = stack.shape[0]
    correlations, ratios = [], []
    for index in evenly_spaced(depth, samples):
        first = max(0, index - model.context)
        around = stack[first : index + model.context + 1]
        denoised = denoise_volume(around, model, window, float_output=True)
        noisy = window.forward(around[index - first])
        correlations.append(residual_correlation(noisy, window.forward(denoised[index - first])))
        ratios.append(noise_scale_ratio(noisy))
    return float(np.median(correlations)), float(np.median(ratios))


def _random_patch(
    stack: np.ndarray,
    offsets: np.ndarray,
    patch_h: int,
    patch_w: int,
    window: IntensityWindow,
    rng: np.random.RandomState,
    learnt: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """A random (C, patch_h, patch_w) patch of a random slice and its neighbours, scaled to [0, 1], randomly flipped,
    and the same window of ``learnt`` (J x I bool, the positions the adaptation may learn from) as float32."""
    depth, height, width = stack.shape
    index = rng.randint(depth)
    top, left = rng.randint(height - patch_h + 1), rng.randint(width - patch_w + 1)
    channels = np.clip(index + offsets, 0, depth - 1)  # edge slices repeat, as in denoise_volume
    patch = window.forward(stack[channels, top : top + patch_h, left : left + patch_w])
    allowed = learnt[top : top + patch_h, left : left + patch_w].astype(np.float32)
    if rng.rand() < 0.5:
        patch, allowed = patch[:, ::-1], allowed[::-1]
    if rng.rand() < 0.5:
        patch, allowed = patch[:, :, ::-1], allowed[:, ::-1]
    return np.ascontiguousarray(patch), np.ascontiguousarray(allowed)
