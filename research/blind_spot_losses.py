"""Two blind-spot losses that lost to the shipped posterior loss (``research/experiments.md``, sessions 4 and 5).

Both read the noise sigma from the third target channel that
``scripts.selfsupervised.BlindSpotMaskd(..., sigma_key="sigma")`` writes, and replace ``train_selfsupervised.yaml``'s
loss with a one-output network (``--network_def#out_channels 1``)::

    loss: {_target_: research.blind_spot_losses.CensoredBlindSpotLoss}
"""

from __future__ import annotations

import torch

from scripts.selfsupervised import BlindSpotLoss, masked_mean


def _noise_sigma(target: torch.Tensor, floor: float) -> torch.Tensor:
    if target.shape[1] < 3:
        raise ValueError("this blind-spot loss needs the noise sigma as a third target channel (sigma_key)")
    return target[:, 2:3].clamp(min=floor)


class CensoredBlindSpotLoss(BlindSpotLoss):
    """:class:`scripts.selfsupervised.BlindSpotLoss` that learns the clipped pixels without bias: a noisy value at 0
    or 1 counts as "at most 0" / "at least 1" of Gaussian noise with the item's sigma (Tobit likelihood, scaled by
    sigma^2 so unclipped pixels keep the squared error / 2). For training from scratch; better than the plain loss
    at heavy zero-mean noise only. ``forward(pred (B, 1, H, W), target (B, 3, H, W))``."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noisy, mask = self.hidden(pred, target)
        sigma = _noise_sigma(target, 1e-3)
        squared = 0.5 * (pred - noisy) ** 2
        below = -(sigma**2) * torch.special.log_ndtr(-pred / sigma)  # P(noisy value <= 0)
        above = -(sigma**2) * torch.special.log_ndtr((pred - 1.0) / sigma)  # P(noisy value >= 1)
        return masked_mean(torch.where(noisy <= 0.0, below, torch.where(noisy >= 1.0, above, squared)), mask)


class NormalizedBlindSpotLoss(BlindSpotLoss):
    """:class:`scripts.selfsupervised.BlindSpotLoss` with each sample's loss divided by its noise variance (sigma at
    least :data:`MIN_SIGMA`): a hidden pixel's expected squared error is ``error^2 + sigma^2``, so without it the
    heavily noised slices dominate and the lightly noised ones, where the blind spot costs most, learn least. Better
    than the plain loss at light noise only. ``forward(pred (B, 1, H, W), target (B, 3, H, W))``."""

    #: Floor of the per-sample sigma: a flat slice measures almost no noise and would take over.
    MIN_SIGMA = 0.01

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noisy, mask = self.hidden(pred, target)
        variance = _noise_sigma(target, self.MIN_SIGMA).flatten(1)[:, 0] ** 2
        per_sample = (mask * (pred - noisy) ** 2).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp(min=1.0)
        return (per_sample / variance).mean()
