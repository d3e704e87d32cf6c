"""TEST STAND-IN for the PyTorch extension's ``PyTorchUtils`` (NOT SlicerPyTorch): ``installTorch`` as in
SlicerPyTorch — it returns None when the user declines and, in testing mode, installs without asking."""

import types

import slicer


class PyTorchUtilsLogic:
    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):  # fmt: skip
        asked = askConfirmation and not slicer.app.testingEnabled()
        if asked and not slicer.util.confirmOkCancelDisplay("This module requires PyTorch. Install it now?"):
            return None
        slicer.util._install("PyTorchUtils.installTorch", f"torch{torchVersionRequirement or ''}")
        return types.SimpleNamespace(__version__="2.13.0")
