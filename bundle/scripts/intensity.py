"""Intensity windows and remaps.

- :class:`IntensityWindow`: invertible map of a volume's native units (HU, MR magnitude, detector counts) to [0, 1].
- :class:`RandLiftBlackLevel` / :class:`RandLiftBlackLeveld`: training augmentation that raises an image's black level.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform

from .errors import InvalidImageError

#: Robust percentiles used when no window is given: noise-resistant, independent of the scanner's value range.
DEFAULT_PERCENTILES = (0.5, 99.5)
#: Enough voxels for stable percentiles; larger volumes are sampled with a stride (memory stays small).
_PERCENTILE_SAMPLES = 4_000_000
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class IntensityWindow:
    """Linear map ``[low, high] -> [0, 1]``; :meth:`inverse` maps back to native units exactly.

    A constant image has ``low == high``; the window then spans one unit so nothing divides by zero.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            raise InvalidImageError(f"intensity window [{self.low}, {self.high}] must be finite")
        if self.high < self.low:
            raise InvalidImageError(f"intensity window [{self.low}, {self.high}]: LOW must not exceed HIGH")
        if max(-self.low, self.high, self.high - self.low) > _FLOAT32_MAX:
            raise InvalidImageError(
                f"intensity window [{self.low:.6g}, {self.high:.6g}] spans more than float32, the precision the network "
                "computes in, can hold; rescale the image"
            )

    @property
    def width(self) -> float:
        # A window narrower than float32 resolves (e.g. 1e-320 wide) is constant to the network, as low == high is.
        return self.high - self.low if np.float32(self.high - self.low) > 0 else 1.0

    def forward(self, values: np.ndarray, clip: bool = True) -> np.ndarray:
        """Native units -> [0, 1] (float32); values outside the window are clipped unless ``clip=False``."""
        scaled = (np.asarray(values, dtype=np.float32) - np.float32(self.low)) / np.float32(self.width)
        return np.clip(scaled, 0.0, 1.0, out=scaled) if clip else scaled

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        """[0, 1] -> native units (float32)."""
        return np.asarray(scaled, dtype=np.float32) * np.float32(self.width) + np.float32(self.low)

    @classmethod
    def from_data(cls, values: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES) -> IntensityWindow:
        """The window used in training and by default at inference.

        8-bit and boolean images use their full dtype range (so PNGs map as ``x / 255``, as in the seeds); other images
        use robust percentiles of their finite voxels.
        """
        values = np.asarray(values)
        if values.dtype == np.uint8:
            return cls(0.0, 255.0)
        if values.dtype == np.bool_:
            return cls(0.0, 1.0)
        flat = values.reshape(-1)
        if flat.size > _PERCENTILE_SAMPLES:
            flat = flat[:: flat.size // _PERCENTILE_SAMPLES]
        flat = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
        if flat.size == 0:
            raise InvalidImageError("the image has no finite voxel values, so no intensity window can be computed")
        low, high = np.percentile(flat, percentiles)
        return cls(float(low), float(high))


class RandLiftBlackLevel(RandomizableTransform):
    """Raise the black level of a [0, 1] image: ``x -> lift + (1 - lift) x``, ``lift`` drawn uniformly from ``lifts``.

    Why: a blind model learns that an image without dark pixels carries offset noise (offset noise lifts the dark
    background of every training slice), and then darkens real images that simply have none: a crop of bright tissue,
    a window whose low end lies above the background (bundle 0.8.0 on the embedded head CT, 0.2 N(0, 1): 14.75 ->
    12.96 dB on its central 256^2 crop, output 0.22 too dark). Applied to the clean image before the noise, so the
    pair teaches that zero-mean noise also occurs on images with a raised black level. Measured (run T, a fifth of the
    patches lifted, against run S): that crop 12.5 -> 15.4 dB, a CT slice lifted by 0.3 29.6 -> 31.4 dB, costing
    0.5-3 dB at the offset and Poisson settings, so ``train.yaml`` leaves it off (``black_level_prob: 0``). White
    stays at 1, nothing leaves [0, 1]; MONAI's RandShiftIntensity + RandScaleIntensity draw shift and scale
    independently and would clip highlights.

    Args:
        prob: probability of lifting an image.
        lifts: range of the new black level, within [0, 1).

    Input and output: NumPy array or tensor of any shape, values in [0, 1].
    """

    def __init__(self, prob: float = 0.2, lifts: tuple[float, float] = (0.1, 0.4)) -> None:
        RandomizableTransform.__init__(self, prob)
        if not 0 <= lifts[0] <= lifts[1] < 1:
            raise ValueError(f"lifts {lifts} must be an ordered range within [0, 1): the new black level")
        self.lifts = lifts
        self.lift = 0.0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self.lift = self.R.uniform(*self.lifts)

    def __call__(self, img: np.ndarray | torch.Tensor, randomize: bool = True) -> np.ndarray | torch.Tensor:
        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        return self.lift + (1 - self.lift) * img


class RandLiftBlackLeveld(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandLiftBlackLevel`: one draw per call, the same lift for every key."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        lifts: tuple[float, float] = (0.1, 0.4),
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.lifter = RandLiftBlackLevel(prob=1.0, lifts=lifts)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandLiftBlackLeveld:
        super().set_random_state(seed, state)
        self.lifter.set_random_state(state=self.R)
        return self

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.lifter.randomize()
        for key in self.key_iterator(d):
            d[key] = self.lifter(d[key], randomize=False)
        return d
