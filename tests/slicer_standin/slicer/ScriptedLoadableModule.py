"""TEST STAND-IN for ``slicer.ScriptedLoadableModule`` (NOT 3D Slicer): the base classes, reduced to what the
MedDenoise Logic needs (a parameter node per logic)."""

import unittest

import slicer


class ScriptedLoadableModule:
    def __init__(self, parent) -> None:
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        self.parent = parent

    def setup(self) -> None:
        pass


class ScriptedLoadableModuleLogic:
    def __init__(self) -> None:
        self._parameter_node = None

    def getParameterNode(self):
        if self._parameter_node is None:
            self._parameter_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
        return self._parameter_node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        print(message)
