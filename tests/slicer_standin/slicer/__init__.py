"""TEST STAND-IN for ``slicer`` (NOT 3D Slicer): MRML volume nodes backed by NumPy arrays, a list-based scene, the
volumes module's clone function and ``slicer.app``. Only what ``MedDenoise.py`` touches is imitated."""

import tempfile
import types

import numpy as np


class vtkMRMLNode:
    _next_id = 1

    def __init__(self, name: str = "") -> None:
        self._id = f"{type(self).__name__}{vtkMRMLNode._next_id}"
        vtkMRMLNode._next_id += 1
        self._name = name

    def GetID(self) -> str:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name

    def GetClassName(self) -> str:
        return type(self).__name__

    def IsA(self, class_name: str) -> bool:
        return any(cls.__name__ == class_name for cls in type(self).__mro__)


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.parameters = {}


class ImageData:
    """The parts of vtkImageData the module reads; dimensions are (I, J, K) as in VTK."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def GetDimensions(self) -> tuple[int, ...]:
        return tuple(reversed(self.array.shape[:3]))

    def GetNumberOfScalarComponents(self) -> int:
        return 1 if self.array.ndim == 3 else self.array.shape[3]


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.array = None
        self.ijk_to_ras = np.eye(4)
        self.transform_id = None

    def GetImageData(self):
        return None if self.array is None else ImageData(self.array)

    def GetIJKToRASMatrix(self, matrix) -> None:
        matrix.elements = self.ijk_to_ras.copy()

    def SetIJKToRASMatrix(self, matrix) -> None:
        self.ijk_to_ras = matrix.elements.copy()

    def CopyOrientation(self, other: "vtkMRMLScalarVolumeNode") -> None:
        self.ijk_to_ras = other.ijk_to_ras.copy()

    def GetTransformNodeID(self):
        return self.transform_id

    def SetAndObserveTransformNodeID(self, node_id) -> None:
        self.transform_id = node_id


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLVectorVolumeNode(vtkMRMLScalarVolumeNode):
    pass


NODE_CLASSES = {
    cls.__name__: cls
    for cls in (vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLVectorVolumeNode)
}


class Scene:
    StartCloseEvent = 66
    EndCloseEvent = 67

    def __init__(self) -> None:
        self.nodes = []

    def AddNewNodeByClass(self, class_name: str, name: str = ""):
        return self.AddNode(NODE_CLASSES[class_name](name))

    def AddNode(self, node):
        self.nodes.append(node)
        return node

    def RemoveNode(self, node) -> None:
        self.nodes.remove(node)

    def GetNumberOfNodes(self) -> int:
        return len(self.nodes)

    def GetFirstNodeByClass(self, class_name: str):
        return next((node for node in self.nodes if node.IsA(class_name)), None)

    def GenerateUniqueName(self, name: str) -> str:
        names = {node.GetName() for node in self.nodes}
        unique, index = name, 1
        while unique in names:
            unique, index = f"{name}_{index}", index + 1
        return unique

    def Clear(self) -> None:
        self.nodes.clear()


class VolumesLogic:
    def CloneVolumeWithoutImageData(self, scene: Scene, volume, name: str):
        clone = scene.AddNode(type(volume)(name))
        clone.CopyOrientation(volume)
        clone.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        return clone


mrmlScene = Scene()
modules = types.SimpleNamespace(volumes=types.SimpleNamespace(logic=VolumesLogic))
app = types.SimpleNamespace(connect=lambda *args: None, temporaryPath=tempfile.gettempdir())

from . import util as util  # noqa: E402  (slicer.util is an attribute of slicer, as in Slicer)
