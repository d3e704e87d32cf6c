"""Checkpoint surgery between the self-supervised networks' one- and two-output heads.

Used to start research runs from trained weights: ``research/configs/recorrupted.yaml`` from the shipped
``models/model_selfsupervised.pt`` cut to its mean channel, and a posterior blind-spot run from a single-output model
of bundle 0.5.0 or older. Both take and return ``state_dict`` mappings of
``scripts.networks.DenoisingAutoencoder`` with a PixelShuffle head (``unshuffle`` > 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

#: Starting log prior variance of a grown second output channel: a prior standard deviation of 0.03 of the window.
INITIAL_LOG_PRIOR = float(2 * np.log(0.03))


def with_prior_channel(state: Mapping[str, torch.Tensor], log_prior: float = INITIAL_LOG_PRIOR) -> dict:
    """A single-output blind-spot network's state dict grown for :class:`scripts.selfsupervised.BlindSpotPosteriorLoss`:
    the output head gets a second channel, the log prior variance, starting at ``log_prior`` everywhere (zero
    weights); the mean channel keeps its trained weights, so training goes on from the trained network (with
    ``train_selfsupervised.yaml`` + ``continue.yaml`` and ``--init_checkpoint``).
    """
    grown = dict(state)
    weight, bias = grown["head.conv.weight"], grown["head.conv.bias"]
    # PixelShuffle output channel c comes from head channels [c r^2, (c + 1) r^2): the new channel's block goes last.
    grown["head.conv.weight"] = torch.cat([weight, torch.zeros_like(weight)])
    grown["head.conv.bias"] = torch.cat([bias, torch.full_like(bias, log_prior)])
    return grown


def mean_channel_only(state: Mapping[str, torch.Tensor]) -> dict:
    """A posterior blind-spot network's state dict cut to its mean channel, the inverse of :func:`with_prior_channel`:
    the start of ``research/configs/recorrupted.yaml`` from ``models/model_selfsupervised.pt`` (trained on noisy
    images only), whose single output is then the clean value."""
    cut = dict(state)
    weight, bias = cut["head.conv.weight"], cut["head.conv.bias"]
    cut["head.conv.weight"], cut["head.conv.bias"] = weight[: len(weight) // 2], bias[: len(bias) // 2]
    return cut
