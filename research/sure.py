"""Training on Stein's unbiased risk estimate (SURE; Soltanayev and Chun 2018): self-supervised, every pixel learnt.

The estimate itself (:class:`scripts.selfsupervised.SureLoss`, :class:`scripts.selfsupervised.SureInferer`) stays in
the bundle, where adapt-to-this-scan uses it to check that an adaptation does no harm; this module holds what only
training on it needs: the target (noisy image and its sigma) for ``research/configs/sure.yaml``, also the target of
the architectural blind spot (``research/configs/blind_spot_network.yaml``). Neither beat the shipped blind-spot
model (``research/experiments.md``, sessions 10 and 13).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform


class NoiseSigmaTargetd(MapTransform):
    """``target_key`` = ``(2, H, W)``: the noisy channel of ``keys`` and a channel filled with the item's noise sigma
    (``sigma_key``, from :func:`scripts.selfsupervised.noisy_only`), the target
    :class:`scripts.selfsupervised.SureLoss` takes; the input stays as it is."""

    def __init__(
        self,
        keys: KeysCollection,
        sigma_key: str = "sigma",
        target_key: str = "label",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.sigma_key, self.target_key = sigma_key, target_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            channel = len(d[key]) // 2  # the centre slice of a 2.5D input, the one denoised
            noisy = d[key][channel : channel + 1]
            full = torch.full_like if isinstance(noisy, torch.Tensor) else np.full_like
            d[self.target_key] = (torch.cat if isinstance(noisy, torch.Tensor) else np.concatenate)(
                [noisy, full(noisy, float(d[self.sigma_key]))]
            )
        return d


def sigma_targets(items: Sequence[dict]) -> list[dict]:
    """Validation items with :class:`NoiseSigmaTargetd`'s target (noisy image, sigma), for SURE and the architectural
    blind spot, which need no clean image and nothing drawn at random."""
    target = NoiseSigmaTargetd("image")
    return [target(item) for item in items]
