"""The convolutional denoising autoencoder (DAE).

The default is Gondara's design (2016): conv 64 -> pool -> conv 64 -> pool -> conv 64 -> up -> conv 64 -> up -> conv 1,
sigmoid (about 112k parameters). Depth, widths, convolutions per level, skip connections, a residual
(predict-the-noise) output and a space-to-depth stem (FFDNet's PixelUnshuffle, so the work happens at low resolution)
are configurable for stronger and faster variants; the building blocks are MONAI's. With ``noise_level_input`` the
network measures each input's noise level itself (:class:`SliceNoiseSigma`) and conditions every level on it
(:class:`NoiseLevelFiLM`): still blind to the caller, who never gives a level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from .noise_level import LatticeScore, SliceNoiseSigma

#: Width of the noise-level embedding that :class:`NoiseLevelFiLM` blocks read.
_NOISE_EMBEDDING = 32
_FINAL_ACTIVATIONS = {"sigmoid": nn.Sigmoid, "clamp": lambda: nn.Hardtanh(0.0, 1.0), None: nn.Identity}


def _block(in_channels: int, out_channels: int, convs: int, norm: str | None) -> nn.Sequential:
    return nn.Sequential(
        *(
            Convolution(2, in_channels if i == 0 else out_channels, out_channels, kernel_size=3, act="relu", norm=norm)
            for i in range(convs)
        )
    )


class GlobalContext(nn.Module):
    """Adds a learned function of each feature map's image-wide mean to every position.

    A blind model cannot tell some noise models apart from a local window: ``0.1 * N(1, 2)`` (an offset of 0.1) and
    ``0.2 * N(0, 1)`` have the same spread; only image-wide statistics, such as how many pixels were clipped at 0 or 1,
    show whether to remove an offset. The 1x1 mixing convolution starts at zero, so the block starts as the identity
    and a network trained without it loads and behaves unchanged.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(channels, channels, kernel_size=1)
        nn.init.zeros_(self.mix.weight)
        nn.init.zeros_(self.mix.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x.mean(dim=(2, 3), keepdim=True))


class RefineBlock(nn.Module):
    """A residual block ``x + norm(conv(relu(norm(conv(x)))))`` that starts as the identity.

    The last normalisation's scale (or, without normalisation, the last convolution) starts at zero, as in Goyal et
    al. (2017), so a trained network grown by these blocks loads (``strict=False``) and behaves unchanged, then
    learns to use the extra depth. MONAI's ``ResidualUnit`` has no such start, hence this block.

    Shapes: ``(B, C, H, W)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, channels: int, norm: str | None) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Convolution(2, channels, channels, kernel_size=3, act="relu", norm=norm),
            Convolution(2, channels, channels, kernel_size=3, act=None, norm=norm),
        )
        last = self.body[1]
        nn.init.zeros_(last.adn.N.weight if norm else last.conv.weight)
        if not norm:
            nn.init.zeros_(last.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class NoiseLevelFiLM(nn.Module):
    """Scales and shifts each feature map by a learned function of the input's noise level (feature-wise linear
    modulation): ``h * (1 + gamma(e)) + beta(e)`` for a noise-level embedding ``e``.

    The projection starts at zero, so the block starts as the identity and a network trained without it loads and
    behaves unchanged. Shapes: ``h (B, C, H, W)``, ``e (B, E)`` -> ``(B, C, H, W)``.
    """

    def __init__(self, embedding: int, channels: int) -> None:
        super().__init__()
        self.project = nn.Linear(embedding, 2 * channels)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.project(embedding)[:, :, None, None].chunk(2, dim=1)
        return h * (1.0 + gamma) + beta


class Unconditioned(nn.Module):
    """:class:`NoiseLevelFiLM`'s stand-in for a network without noise-level input: passes ``h`` through."""

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return h


class DenoisingAutoencoder(nn.Module):
    """Convolutional encoder-decoder that maps a noisy slice to a clean one.

    Two designs, one class: the defaults build Gondara's DAE (2016; two 64-wide levels, no skips, sigmoid output,
    about 112k parameters), the seeds' baseline. The shipped network is a residual U-Net: ``configs/train.yaml``'s
    ``network_def`` (skip connections, residual output, batch norm, a PixelUnshuffle stem, global context,
    refinement blocks and the noise-level input), which :func:`scripts.engine.build_network` builds from the bundle.

    Args:
        in_channels: input channels (1, or 2k+1 neighbouring slices for 2.5D input; the centre one is denoised).
        out_channels: output channels (1).
        features: width of each encoder level; each level is followed by a 2x max-pool, so the network downsamples
            by ``2 ** len(features)``. The decoder mirrors it (a block, then 2x nearest upsampling, per level).
        convs_per_level: 3x3 convolutions (+ReLU) in each encoder and decoder block.
        skip_connections: concatenate each encoder level's features to the decoder at the same scale (U-Net style).
        residual: predict the noise and subtract it from the input's centre channel (DnCNN style) instead of
            predicting the clean image directly.
        norm: optional normalisation in every block (e.g. ``"batch"``, ``"instance"``), None for Gondara's design.
        final_activation: ``"sigmoid"`` keeps outputs in [0, 1] (Gondara); ``"clamp"`` clips them to [0, 1] (suits a
            residual output, which starts near the identity); ``None`` for a linear output.
        unshuffle: space-to-depth factor of the stem: the input is rearranged into ``in_channels * unshuffle**2``
            channels at ``1 / unshuffle`` resolution and the head's output is shuffled back (1 = no stem). A factor
            of 2 cuts the cost of every convolution by 4 at a given width.
        global_context: add a :class:`GlobalContext` block at the lowest resolution, so whole-image statistics can
            tell noise models apart (what one blind model needs for offset and zero-mean noise of the same spread).
        refine_blocks: :class:`RefineBlock` residual blocks after each decoder block: depth at the low-resolution
            levels, where it is cheap (0 = none).
        fine_blocks: :class:`RefineBlock` residual blocks after the first encoder block, at the finest scale the
            network works at (the decoder's blocks all run at coarser ones): depth where the fine detail of lightly
            noised images is, at the price of ``2 * features[0] ** 2`` 3x3 multiply-adds per position each (0 = none).
        noise_level_input: estimate the centre channel's noise sigma (:class:`SliceNoiseSigma`) and modulate every
            encoder and decoder level by it (:class:`NoiseLevelFiLM`): one blind network that still knows how much
            to smooth (light noise: keep texture; heavy: smooth), as FFDNet does with a level given by the user.
        lattice_input: feed the centre channel's :class:`LatticeScore` into the noise-level embedding beside its
            sigma (needs ``noise_level_input``): it tells the seeds' Poisson noise, whose offset must be subtracted,
            from Gaussian noise of the same spread.

    Shapes: input ``(B, in_channels, H, W)`` with any H, W >= 1 (padded internally to a multiple of the downsampling
    factor and cropped back); output ``(B, out_channels, H, W)``. Intensities are expected in [0, 1].
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        features: Sequence[int] = (64, 64),
        convs_per_level: int = 1,
        skip_connections: bool = False,
        residual: bool = False,
        norm: str | None = None,
        final_activation: str | None = "sigmoid",
        unshuffle: int = 1,
        global_context: bool = False,
        refine_blocks: int = 0,
        fine_blocks: int = 0,
        noise_level_input: bool = False,
        lattice_input: bool = False,
    ) -> None:
        super().__init__()
        if (
            not features
            or min(features) < 1
            or convs_per_level < 1
            or unshuffle < 1
            or min(refine_blocks, fine_blocks) < 0
        ):
            raise ValueError(
                "features must be a non-empty list of positive widths, convs_per_level and unshuffle >= 1, "
                "refine_blocks and fine_blocks >= 0"
            )
        if final_activation not in _FINAL_ACTIVATIONS:
            raise ValueError(f"final_activation must be one of {list(_FINAL_ACTIVATIONS)}, not {final_activation!r}")
        if lattice_input and not noise_level_input:
            raise ValueError("lattice_input feeds the noise-level embedding: set noise_level_input too")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.multiple = unshuffle * 2 ** len(features)
        self.skip_connections, self.residual = skip_connections, residual
        self.stem = nn.PixelUnshuffle(unshuffle)
        self.encoder = nn.ModuleList()
        channels = in_channels * unshuffle**2
        for width in features:
            self.encoder.append(_block(channels, width, convs_per_level, norm))
            channels = width
        self.encoder[0].extend(RefineBlock(features[0], norm) for _ in range(fine_blocks))
        self.context = GlobalContext(channels) if global_context else nn.Identity()
        self.decoder = nn.ModuleList()
        for width in reversed(features):
            block = _block(channels, width, convs_per_level, norm)
            block.extend(RefineBlock(width, norm) for _ in range(refine_blocks))
            self.decoder.append(block)
            channels = width + (width if skip_connections else 0)
        self.head = Convolution(2, channels, out_channels * unshuffle**2, kernel_size=3, conv_only=True)
        self.noise_level_input = noise_level_input
        self.noise_sigma = SliceNoiseSigma() if noise_level_input else nn.Identity()
        self.lattice_input = lattice_input
        self.lattice_score = LatticeScore() if lattice_input else nn.Identity()
        readouts = 2 if lattice_input else 1
        self.noise_embedding = (
            nn.Sequential(nn.Linear(readouts, _NOISE_EMBEDDING), nn.ReLU()) if noise_level_input else nn.Identity()
        )

        def film(width: int) -> nn.Module:
            return NoiseLevelFiLM(_NOISE_EMBEDDING, width) if noise_level_input else Unconditioned()

        self.encoder_films = nn.ModuleList(film(width) for width in features)
        self.decoder_films = nn.ModuleList(film(width) for width in reversed(features))
        self.unstem = nn.PixelShuffle(unshuffle)
        self.final = _FINAL_ACTIVATIONS[final_activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        h = self.stem(padded)
        embedding = h.new_zeros(h.shape[0], 1)
        if self.noise_level_input:
            centre = x[:, self.in_channels // 2 : self.in_channels // 2 + 1]
            # log scale: 0.02 and 0.05 differ as much as 0.2 and 0.5; 0 at sigma 0.1.
            level = torch.log(self.noise_sigma(centre).clamp(min=1e-3) / 0.1)
            readouts = level[:, None]
            if self.lattice_input:
                readouts = torch.cat([readouts, self.lattice_score(centre)[:, None]], dim=1)
            embedding = self.noise_embedding(readouts.to(h.dtype))
        skips = []
        # zip() without strict=: TorchScript (ckpt_export) has no keyword arguments there; the lists match by build.
        for block, film in zip(self.encoder, self.encoder_films):  # noqa: B905
            h = film(block(h), embedding)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.context(h)
        for block, film in zip(self.decoder, self.decoder_films):  # noqa: B905
            h = F.interpolate(film(block(h), embedding), scale_factor=2.0, mode="nearest")
            if self.skip_connections:
                h = torch.cat([h, skips.pop()], dim=1)  # deepest first
        out = self.unstem(self.head(h))
        if self.residual:
            centre = self.in_channels // 2
            out = padded[:, centre : centre + self.out_channels] - out
        return self.final(out)[..., :height, :width]
