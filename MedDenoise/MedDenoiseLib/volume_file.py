"""The temporary-file round trip between Slicer and the worker: a K x J x I array plus its 4x4 IJK-to-RAS matrix
written as NRRD (LPS, as every ITK-based reader expects) and read back.

Slicer's nodes keep geometry as an IJK-to-RAS matrix; ITK keeps spacing, origin and direction in LPS. The conversion
flips the first two world axes; spacing is the length of each matrix column and the direction its unit vector.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import ModuleError

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def sitk_geometry(ijk_to_ras: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(spacing, origin, direction)`` in ITK's LPS convention for a 4x4 IJK-to-RAS matrix."""
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4):
        raise ModuleError(f"an IJK-to-RAS matrix must be 4x4, not {matrix.shape}")
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    if not np.all(spacing > 0):
        raise ModuleError(f"the volume's IJK-to-RAS matrix has a zero spacing ({spacing}); fix its geometry first")
    direction = _RAS_TO_LPS @ (matrix[:3, :3] / spacing)
    origin = _RAS_TO_LPS @ matrix[:3, 3]
    return tuple(spacing), tuple(origin), tuple(direction.reshape(-1))


def ijk_to_ras_matrix(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a 3D ITK image (inverse of :func:`sitk_geometry`)."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = _RAS_TO_LPS @ direction * np.asarray(image.GetSpacing())
    matrix[:3, 3] = _RAS_TO_LPS @ np.asarray(image.GetOrigin())
    return matrix


def write_volume_file(path: str | os.PathLike, array: np.ndarray, ijk_to_ras: np.ndarray) -> Path:
    """Write a K x J x I array (a copy; the caller's array is not touched) with its geometry to ``path`` (.nrrd)."""
    if array.ndim != 3:
        raise ModuleError(f"expected a K x J x I scalar volume, got an array of shape {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    spacing, origin, direction = sitk_geometry(ijk_to_ras)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return Path(path)


def read_volume_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(K x J x I array, 4x4 IJK-to-RAS matrix)`` of a 3D image file written by the worker."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise ModuleError(
            f"{path}: the worker's result cannot be read ({str(error).strip().splitlines()[-1]})"
        ) from None
    if image.GetDimension() != 3:
        raise ModuleError(f"{path}: the worker's result is {image.GetDimension()}D; expected a 3D volume")
    return sitk.GetArrayFromImage(image), ijk_to_ras_matrix(image)
