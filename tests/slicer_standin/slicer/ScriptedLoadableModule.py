"""TEST STAND-IN for ``slicer.ScriptedLoadableModule`` (NOT 3D Slicer): the base classes, reduced to what the
MedDenoise module needs (a parameter node per logic, a panel for the widget)."""

import sys
import unittest
from pathlib import Path

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ModulePanel:
    """The module's panel in the main window (``self.parent`` of a module widget)."""

    isEntered = True

    def layout(self):
        return self

    def addWidget(self, widget) -> None:
        pass


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent or ModulePanel()
        self.layout = self.parent.layout()

    def resourcePath(self, filename: str) -> str:
        return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)

    def setup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self) -> None:
        self._parameter_node = None

    def getParameterNode(self):
        """The logic's parameter node; a new one once the scene was closed, as in Slicer."""
        if self._parameter_node not in slicer.mrmlScene.nodes:
            self._parameter_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        return self._parameter_node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        print(message)
