"""TEST STAND-IN for ``slicer.util`` (NOT 3D Slicer): array access to volume nodes and the helpers MedDenoise calls."""

import os
import tempfile

import numpy as np
import slicer

#: The keyword arguments of the last setSliceViewerLayers call (tests check what the views were told to show).
slice_viewer_layers = {}


def arrayFromVolume(volume) -> np.ndarray:
    """A view on the node's voxels, as in Slicer."""
    return volume.array


def updateVolumeFromArray(volume, array: np.ndarray) -> None:
    """A deep copy becomes the node's voxels (its dtype becomes the node's scalar type), as in Slicer."""
    if array.dtype == np.int64:
        raise ValueError("int64 is not supported by VTK image data")
    volume.array = np.array(array, copy=True)


def arrayFromVTKMatrix(matrix) -> np.ndarray:
    return matrix.elements.copy()


def tempDirectory(key: str = "__SlicerTemp__") -> str:
    return tempfile.mkdtemp(prefix=key, dir=slicer.app.temporaryPath)


def startupEnvironment() -> dict:
    return dict(os.environ)


def setSliceViewerLayers(**kwargs) -> None:
    slice_viewer_layers.clear()
    slice_viewer_layers.update(kwargs)


class VTKObservationMixin:
    def __init__(self) -> None:
        self.observations = []

    def addObserver(self, caller, event, callback) -> None:
        self.observations.append((caller, event, callback))

    def removeObserver(self, caller, event, callback) -> None:
        self.observations.remove((caller, event, callback))

    def removeObservers(self) -> None:
        self.observations.clear()
