"""Invertible intensity windows: map a volume's native units (HU, MR magnitude, detector counts) to [0, 1] and back."""

from __future__ import annotations

import dataclasses

import numpy as np

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
