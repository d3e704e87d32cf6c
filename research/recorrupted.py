"""The Recorrupted-to-Recorrupted objective (Pang et al. 2021): self-supervised training without a blind spot.

Two new noisy copies of a noisy image whose noises are independent, one the input and one the target: the network
sees every pixel and any supervised loss applies. Layered on the bundle's noisy-only data path by
``research/configs/recorrupted.yaml``; it did not beat the shipped blind-spot model (``research/experiments.md``,
session 9).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform


class Recorruptd(RandomizableTransform, MapTransform):
    """Recorrupted-to-Recorrupted pairs from one noisy image (Pang et al. 2021): with ``z ~ N(0, 1)`` per pixel and the
    image's noise sigma ``s``, ``image`` becomes ``y + alpha s z`` and ``target_key`` gets ``y - s z / alpha``.

    For Gaussian noise of sigma ``s`` the two copies' noises (``n + alpha s z`` and ``n - s z / alpha``) are
    uncorrelated, hence independent, so the best prediction of the target from the input is the clean image: a
    supervised loss on these pairs trains a denoiser of noise ``s sqrt(1 + alpha^2)`` without a clean image or a blind
    spot. Unlike the blind spot, the network sees the pixel it denoises, which is what light noise needs. A network
    trained over a range of noise levels (the training mixture) then also denoises the unrecorrupted image.

    Args:
        keys: the noisy image(s), ``(C, H, W)`` in [0, 1].
        sigma_key: the item's noise sigma, estimated from the noisy image (:func:`scripts.selfsupervised.noisy_only`).
        target_key: where the target copy goes (``label``, for MONAI's ``SupervisedTrainer``).
        alpha: input-to-target noise split; 0.5 (the paper's) gives input noise 1.12 s and target noise 2.24 s.
        clip_input: clip the input copy to [0, 1], as every image the network meets at inference is. The target stays
            unclipped: its expectation given the unclipped input is the clean image's, hence (a function of the input
            conditions on less) also given the clipped one, so the objective stays unbiased.
    """

    def __init__(
        self,
        keys: KeysCollection,
        sigma_key: str = "sigma",
        target_key: str = "label",
        alpha: float = 0.5,
        clip_input: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob=1.0)
        if alpha <= 0:
            raise ValueError(f"recorruption alpha {alpha} must be positive (0.5 is the usual choice)")
        self.sigma_key, self.target_key, self.alpha, self.clip_input = sigma_key, target_key, alpha, clip_input

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        sigma = float(d[self.sigma_key])
        for key in self.key_iterator(d):
            noisy = d[key]
            z = self.R.standard_normal(noisy.shape).astype(np.float32) * sigma
            if isinstance(noisy, torch.Tensor):
                z = torch.as_tensor(z, dtype=noisy.dtype, device=noisy.device)
            recorrupted = noisy + self.alpha * z
            d[key] = recorrupted.clip(0.0, 1.0) if self.clip_input else recorrupted
            d[self.target_key] = noisy - z / self.alpha
        return d


def recorrupted_pairs(items: Sequence[dict], seed: int = 0, alpha: float = 0.5) -> list[dict]:
    """Fixed recorrupted inputs and targets (drawn once from ``seed``) for a validation that needs no clean image."""
    recorrupt = Recorruptd("image", alpha=alpha).set_random_state(seed=seed)
    return [recorrupt(item) for item in items]
