"""An architectural blind spot (Laine et al. 2019): a network that never sees the pixel it predicts, so every pixel
of a noisy patch is a training target. Trained by ``research/configs/blind_spot_network.yaml``; 0.2-1.0 dB below the
shipped masked blind-spot model at every Gaussian setting (``research/experiments.md``, session 13, run B1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """Row ``i`` of the result is row ``i - 1`` of ``x`` (row 0 zeros): what row ``i`` sees moves one row up."""
    return F.pad(x, (0, 0, 1, 0))[..., :-1, :]


class UpwardConv(nn.Module):
    """3x3 convolution and leaky ReLU whose output at row ``i`` sees input rows ``i - 2 .. i`` only (Laine et al.
    2019's shifted convolution: zero padding of two rows above and none below), so a stack of them sees nothing below
    the row it writes. Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(F.pad(x, (1, 1, 2, 0))), 0.1)


class BlindSpotNetwork(nn.Module):
    """A U-Net that never sees the pixel it predicts: an architectural blind spot (Laine et al. 2019).

    One U-Net of :class:`UpwardConv` layers (each pooling step shifted down a row first, so no feature sees below its
    row) looks up from each pixel; its features, shifted down one more row, see only the rows strictly above. It runs
    on the input turned by 0, 90, 180 and 270 degrees, the four results are turned back, and 1x1 convolutions combine
    them: the output at a pixel depends on every pixel of its neighbourhood but itself. So every pixel of a noisy
    patch is a training target of :class:`scripts.selfsupervised.BlindSpotPosteriorLoss` (about 30 times the targets
    of the masked blind spot's 3 %, and no replaced pixels whose statistics differ from those at inference).

    Args:
        in_channels: input channels (1, or 2k+1 neighbouring slices: the predicted position is hidden in all of them).
        out_channels: 2 for the clean value's mean and log prior variance (the posterior blend), or 1.
        features: width of each level; each deeper level is 2x max-pooled, so inputs are padded to a multiple of
            ``2 ** (len(features) - 1)``.
        convs_per_level: :class:`UpwardConv` layers in each encoder and decoder block.

    Shapes: ``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``, any H, W >= 1, intensities in [0, 1]. No
    normalisation layer: batch statistics would carry a pixel's own value back to it during training.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (32, 48, 64, 96),
        convs_per_level: int = 1,
    ) -> None:
        super().__init__()
        if not features or min(features) < 1 or convs_per_level < 1:
            raise ValueError("features must be a non-empty list of positive widths and convs_per_level >= 1")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.multiple = 2 ** (len(features) - 1)

        def block(channels: int, width: int) -> nn.Sequential:
            return nn.Sequential(*(UpwardConv(channels if i == 0 else width, width) for i in range(convs_per_level)))

        widths = [in_channels, *features]
        self.encoder = nn.ModuleList(block(widths[i], widths[i + 1]) for i in range(len(features)))
        self.decoder = nn.ModuleList(
            block(features[i + 1] + features[i], features[i]) for i in reversed(range(len(features) - 1))
        )
        self.combine = nn.Sequential(
            nn.Conv2d(4 * features[0], 2 * features[0], kernel_size=1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(2 * features[0], out_channels, kernel_size=1),
        )

    def _look_up(self, x: torch.Tensor) -> torch.Tensor:
        """Features at each pixel from the rows strictly above it only."""
        skips = []
        h = x
        for level, block in enumerate(self.encoder):
            if level:
                h = F.max_pool2d(_shift_down(h), 2)
            h = block(h)
            skips.append(h)
        skips.pop()
        for block in self.decoder:
            h = block(torch.cat([F.interpolate(h, scale_factor=2.0, mode="nearest"), skips.pop()], dim=1))
        return _shift_down(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        size = -(-max(height, width) // self.multiple) * self.multiple
        # Zero padding (a copy of an edge pixel, as replicate or reflect make, would let it see itself) to a square, so the
        # four turns share one batch.
        square = F.pad(x, (0, size - width, 0, size - height))
        turns = torch.cat([torch.rot90(square, k, dims=(2, 3)) for k in range(4)])
        looks = self._look_up(turns).chunk(4)
        back = torch.cat([torch.rot90(look, -k, dims=(2, 3)) for k, look in enumerate(looks)], dim=1)
        return self.combine(back)[..., :height, :width]
