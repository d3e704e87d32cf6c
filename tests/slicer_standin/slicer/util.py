"""TEST STAND-IN for ``slicer.util`` (NOT 3D Slicer): array access to volume nodes and the helpers MedDenoise calls,
with Slicer's signatures and errors (``updateVolumeFromArray`` raises RuntimeError, makes no display node).

Installing is imitated: ``environment`` is the set of installed distribution names the installers add to (``None``:
nothing is imitated); ``installs`` records every installation as ``(installer, requirements, options)``."""

import contextlib
import os
import tempfile
import types

import numpy as np
import slicer

#: What the slice views show: the background/foreground volumes and the foreground opacity.
slice_viewer_layers = {}
#: Imitated Python environment (lower-case distribution names) and the installations made into it.
environment = None
installs = []
#: The answer the user gives to the next confirmation dialogs, and the dialogs shown.
confirm_answer = True
dialogs = []


def arrayFromVolume(volume) -> np.ndarray:
    """A view on the node's voxels, as in Slicer."""
    return volume.array


def updateVolumeFromArray(volume, array: np.ndarray) -> None:
    """A deep copy becomes the node's voxels (its dtype becomes the node's scalar type), as in Slicer, which raises
    RuntimeError for shapes it cannot store and for int64 ("long long" volumes do not render)."""
    if array.ndim not in (1, 2, 3, 4):
        raise RuntimeError(f"Unsupported numpy array shape: {array.shape}")
    if array.dtype == np.int64:
        raise RuntimeError("Unsupported numpy array type: long long")
    volume.array = np.array(array, copy=True)


def arrayFromVTKMatrix(matrix) -> np.ndarray:
    return matrix.elements.copy()


def tempDirectory(key: str = "__SlicerTemp__", tempDir=None, includeDateTime: bool = True) -> str:
    return tempfile.mkdtemp(prefix=key, dir=tempDir or slicer.app.temporaryPath)


def startupEnvironment() -> dict:
    return dict(os.environ)


def setSliceViewerLayers(
    background="keep-current",
    foreground="keep-current",
    label="keep-current",
    foregroundOpacity=None,
    labelOpacity=None,
    fit=False,
    rotateToVolumePlane=False,
) -> None:
    for layer, value in (("background", background), ("foreground", foreground), ("label", label)):
        if value != "keep-current":
            if value is not None and value.GetDisplayNode() is None:
                raise AssertionError(f"{value.GetName()} has no display node: Slicer would show nothing")
            slice_viewer_layers[layer] = value
    if foregroundOpacity is not None:
        slice_viewer_layers["foregroundOpacity"] = foregroundOpacity


def confirmOkCancelDisplay(text, windowTitle=None, parent=None, **kwargs) -> bool:
    dialogs.append(text)
    return confirm_answer


def _install(installer: str, requirements, **options) -> None:
    if environment is None:
        raise AssertionError("the test did not set up an imitated environment; nothing may really be installed")
    names = requirements.split() if isinstance(requirements, str) else list(requirements)
    installs.append((installer, names, options))
    skip_next = False
    for name in names:
        if skip_next or name.startswith("-"):
            skip_next = name in ("-c", "--constraint")
            continue
        environment.add(name.split(">")[0].split("<")[0].split("=")[0].split("[")[0].lower())


def pip_install(requirements, **kwargs) -> None:
    """Slicer 5.12+ delegates to ``slicer.packaging.pip_install``; 5.10 runs ``pip install`` with the list."""
    _install("slicer.util.pip_install", requirements, **kwargs)


def loadUI(path):
    from .widgets import load_ui

    return load_ui(path)


def childWidgetVariables(widget):
    return types.SimpleNamespace(**widget.children)


def errorDisplay(text, windowTitle=None, parent=None, standardButtons=None, **kwargs) -> None:
    dialogs.append(text)


@contextlib.contextmanager
def tryWithErrorDisplay(message=None, show=True, waitCursor=False):
    """As Slicer's: shows the error (not in testing mode) and raises it again."""
    try:
        yield
    except Exception as error:
        if show and not slicer.app.testingEnabled():
            errorDisplay(f"{message}\n\n{error}" if message else str(error))
        raise


class VTKObservationMixin:
    """Observes through the caller's ``AddObserver`` (the scene, a parameter node), as Slicer's mixin does."""

    def __init__(self) -> None:
        self.observations = []

    def addObserver(self, caller, event, callback) -> None:
        self.observations.append((caller, event, callback, caller.AddObserver(event, callback)))

    def removeObserver(self, caller, event, callback) -> None:
        for observation in [o for o in self.observations if o[:3] == (caller, event, callback)]:
            caller.RemoveObserver(observation[3])
            self.observations.remove(observation)

    def removeObservers(self) -> None:
        for caller, _, _, tag in self.observations:
            caller.RemoveObserver(tag)
        self.observations.clear()
