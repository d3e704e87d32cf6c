"""Volume checks and slice views shared by the engine, the noise readout and adapt-to-this-scan.

The bottom of the import graph (it imports only ``errors``): every module that takes a volume checks it here and walks
its slices here, so none of them imports another to do so.

>>> volume = check_volume(volume, axis=0)   # K x J x I or J x I, raises InvalidImageError naming the problem
>>> stack = slice_stack(volume, axis=0)     # K x J x I view (1 x J x I for an image), never a copy
>>> with checked_once(volume, axis=0):      # one check for a whole run: noise readout, adaptation, engine
...     denoised = denoise_volume(volume, model)
>>> evenly_spaced(len(stack), 16)           # indices of up to 16 slices from the first to the last
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import InvalidImageError

_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Arrays checked for a whole run (:func:`checked_once`) in this thread or task: checking one of them again skips the
#: pass over its values, the part of the check whose cost grows with the volume.
_CHECKED: contextvars.ContextVar[tuple[np.ndarray, ...]] = contextvars.ContextVar("checked_volumes", default=())


def check_volume(volume: Any, axis: int = 0) -> np.ndarray:
    """Validate a 2D image or 3D volume to denoise along ``axis``; raises :class:`InvalidImageError` naming the
    problem and what to do, else returns ``volume`` unchanged."""
    if not isinstance(volume, np.ndarray):
        raise InvalidImageError(f"expected a NumPy array, got {type(volume).__name__}")
    if volume.ndim not in (2, 3):
        raise InvalidImageError(
            f"expected a 2D image or a 3D volume, got {volume.ndim}D of shape {volume.shape}; split 4D series first"
        )
    if volume.size == 0:
        raise InvalidImageError(f"the image is empty (shape {volume.shape})")
    if volume.dtype.kind not in "uif":
        kind = {"b": "boolean (a mask?)", "c": "complex (use the magnitude)"}.get(volume.dtype.kind, str(volume.dtype))
        raise InvalidImageError(f"cannot denoise a {kind} image; give grey intensities (integer or float)")
    if volume.dtype.kind == "f" and not any(volume is checked for checked in _CHECKED.get()):
        _check_values(volume)
    if not -volume.ndim <= axis < volume.ndim or (volume.ndim == 2 and axis not in (0, -2)):
        raise InvalidImageError(f"axis {axis} does not fit a {volume.ndim}D image (use 0, 1 or 2 for volumes)")
    return volume


def _check_values(volume: np.ndarray) -> None:
    """Refuse NaN/Inf values and values beyond float32 in a float ``volume``: one pass over all its values."""
    bad = volume.size - int(np.count_nonzero(np.isfinite(volume)))
    if bad:
        raise InvalidImageError(f"the image has {bad} NaN/Inf voxels; fill or mask them before denoising")
    largest = max(-float(volume.min()), float(volume.max()))
    if largest > _FLOAT32_MAX:  # float64 beyond float32 would become Inf inside the network
        raise InvalidImageError(
            f"the image has values up to {largest:.3g}, beyond the float32 range (±{_FLOAT32_MAX:.3g}) the network "
            "computes in; rescale it (e.g. to its physical units) before denoising"
        )


@contextlib.contextmanager
def checked_once(volume: Any, axis: int = 0) -> Iterator[np.ndarray]:
    """Check ``volume`` (:func:`check_volume`) once for a whole run: inside the block, the noise readout, the
    adaptation and the engine check the same array again without another pass over its values. The array is
    read-only inside the block, so nothing can change the values that were checked."""
    volume = check_volume(volume, axis)
    writeable = volume.flags.writeable
    volume.flags.writeable = False
    token = _CHECKED.set((*_CHECKED.get(), volume))
    try:
        yield volume
    finally:
        _CHECKED.reset(token)
        volume.flags.writeable = writeable


def slice_stack(volume: np.ndarray, axis: int = 0) -> np.ndarray:
    """The slices of a checked K x J x I ``volume`` along ``axis`` as a K x H x W view (a J x I image: 1 x J x I)."""
    return np.moveaxis(volume, axis, 0) if volume.ndim == 3 else volume[None]


def evenly_spaced(count: int, at_most: int | None) -> np.ndarray:
    """Sorted indices of up to ``at_most`` of ``count`` slices, evenly spaced from the first to the last (all of them
    when ``at_most`` is ``None`` or not below ``count``): the sample every reader of a few slices takes."""
    if not at_most or at_most >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, at_most).round().astype(int))


def unstack(stack: np.ndarray, like: np.ndarray, axis: int = 0) -> np.ndarray:
    """Inverse of :func:`slice_stack`: ``stack`` (K x H x W) back in the layout of ``like`` (the volume it came from)."""
    return np.moveaxis(stack, 0, axis) if like.ndim == 3 else stack[0]
