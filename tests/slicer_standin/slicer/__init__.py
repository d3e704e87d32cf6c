"""TEST STAND-IN for ``slicer`` (NOT 3D Slicer): MRML volume and display nodes backed by NumPy arrays, a list-based
scene that fires its close events, the subject hierarchy, the volumes module's clone function and ``slicer.app``.
Only what ``MedDenoise.py`` touches is imitated, at least as strictly as Slicer 5.10-5.13 where it matters (read
against ``Libs/MRML/Core`` and ``Modules/Loadable/SubjectHierarchy``). Like Slicer, ``import slicer`` does not import
``slicer.packaging``."""

import tempfile

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
    """Parameters and the ModifiedEvent observers of a parameter node."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.parameters = {}
        self.observers = {}

    def AddObserver(self, event: int, callback) -> int:
        tag = max(self.observers, default=0) + 1
        self.observers[tag] = callback
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self.observers.pop(tag, None)


class vtkMRMLScalarVolumeDisplayNode(vtkMRMLNode):
    """Window/level and colour table of a scalar volume; auto window/level until one is set."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.window, self.level, self.auto_window_level = 256.0, 128.0, True
        self.color_node_id = "vtkMRMLColorTableNodeGrey"

    def SetWindowLevel(self, window: float, level: float) -> None:
        self.window, self.level = float(window), float(level)

    def GetWindow(self) -> float:
        return self.window

    def GetLevel(self) -> float:
        return self.level

    def SetAutoWindowLevel(self, on) -> None:
        self.auto_window_level = bool(on)

    def GetAutoWindowLevel(self) -> bool:
        return self.auto_window_level

    def SetAndObserveColorNodeID(self, node_id: str) -> None:
        self.color_node_id = node_id

    def GetColorNodeID(self) -> str:
        return self.color_node_id


class ImageData:
    """The parts of vtkImageData the module reads; dimensions are (I, J, K) as in VTK."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def GetDimensions(self) -> tuple[int, ...]:
        return tuple(reversed(self.array.shape[:3]))

    def GetNumberOfScalarComponents(self) -> int:
        return 1 if self.array.ndim == 3 else self.array.shape[3]


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    """As in Slicer, a volume made with ``AddNewNodeByClass`` (the node selector's "Create new") has no display node
    and shows nothing until ``CreateDefaultDisplayNodes``."""

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self.array = None
        self.ijk_to_ras = np.eye(4)
        self.transform_id = None
        self.display_node = None

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

    def GetDisplayNode(self):
        return self.display_node

    def CreateDefaultDisplayNodes(self) -> None:
        if self.display_node is None:
            self.display_node = mrmlScene.AddNode(vtkMRMLScalarVolumeDisplayNode())


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkMRMLVectorVolumeNode(vtkMRMLScalarVolumeNode):
    pass


NODE_CLASSES = {
    cls.__name__: cls
    for cls in (vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLVectorVolumeNode)
}


class vtkMRMLSubjectHierarchyConstants:
    @staticmethod
    def GetDICOMAttributePrefix() -> str:
        return "DICOM."

    @staticmethod
    def GetDICOMUIDName() -> str:
        return "DICOM"

    @staticmethod
    def GetDICOMLevelPatient() -> str:
        return "Patient"

    @staticmethod
    def GetDICOMLevelStudy() -> str:
        return "Study"


class vtkMRMLSubjectHierarchyNode(vtkMRMLNode):
    """Items in a tree under the scene item; every data node added to the scene gets an item under the scene item
    (Slicer's subject hierarchy logic does that), whatever its source's place. Attribute values must be strings, and
    a missing attribute reads as "" (``std::string``), as in Slicer."""

    SCENE_ITEM = 1

    def __init__(self) -> None:
        super().__init__("SubjectHierarchy")
        self.Clear()

    def Clear(self) -> None:
        self.items = {self.SCENE_ITEM: {"parent": 0, "node": None, "name": "Scene", "level": "Scene", "attributes": {},
                                        "uids": {}}}  # fmt: skip
        self._next_item = 2

    @staticmethod
    def GetSubjectHierarchyNode(scene):
        return scene.subject_hierarchy

    def GetSceneItemID(self) -> int:
        return self.SCENE_ITEM

    def _item(self, item_id: int) -> dict:
        if item_id not in self.items:
            raise KeyError(f"no subject hierarchy item {item_id}")
        return self.items[item_id]

    def _create(self, parent: int, name: str, level: str, node=None) -> int:
        self._item(parent)
        item_id, self._next_item = self._next_item, self._next_item + 1
        self.items[item_id] = {"parent": parent, "node": node, "name": name, "level": level, "attributes": {},
                               "uids": {}}  # fmt: skip
        return item_id

    def CreateSubjectItem(self, parent: int, name: str) -> int:
        return self._create(parent, name, "Patient")

    def CreateStudyItem(self, parent: int, name: str) -> int:
        return self._create(parent, name, "Study")

    def CreateFolderItem(self, parent: int, name: str) -> int:
        return self._create(parent, name, "Folder")

    def CreateItem(self, parent: int, node) -> int:
        """As in Slicer: a data node that already has an item is moved under ``parent``."""
        item_id = self.GetItemByDataNode(node)
        if item_id:
            self.SetItemParent(item_id, parent)
            return item_id
        return self._create(parent, node.GetName(), "", node)

    def RemoveItemOfNode(self, node) -> None:
        item_id = self.GetItemByDataNode(node)
        if item_id:
            del self.items[item_id]

    def GetItemByDataNode(self, node) -> int:
        return next((i for i, item in self.items.items() if node is not None and item["node"] is node), 0)

    def GetItemDataNode(self, item_id: int):
        return self._item(item_id)["node"]

    def GetItemParent(self, item_id: int) -> int:
        return self._item(item_id)["parent"]

    def SetItemParent(self, item_id: int, parent: int) -> None:
        self._item(parent)
        if item_id in (0, self.SCENE_ITEM):
            raise ValueError("the scene item cannot be moved")
        self._item(item_id)["parent"] = parent

    def GetItemLevel(self, item_id: int) -> str:
        return self._item(item_id)["level"]

    def GetItemName(self, item_id: int) -> str:
        item = self._item(item_id)
        return item["node"].GetName() if item["node"] is not None else item["name"]

    def SetItemAttribute(self, item_id: int, name: str, value: str) -> None:
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"SetItemAttribute takes strings, got {type(name).__name__}, {type(value).__name__}")
        self._item(item_id)["attributes"][name] = value

    def GetItemAttribute(self, item_id: int, name: str) -> str:
        return self._item(item_id)["attributes"].get(name, "")

    def HasItemAttribute(self, item_id: int, name: str) -> bool:
        return name in self._item(item_id)["attributes"]

    def GetItemAttributeNames(self, item_id: int) -> list[str]:
        return list(self._item(item_id)["attributes"])

    def SetItemUID(self, item_id: int, name: str, uid: str) -> None:
        self._item(item_id)["uids"][name] = uid

    def GetItemUID(self, item_id: int, name: str) -> str:
        return self._item(item_id)["uids"].get(name, "")


class Scene:
    """A list of nodes; ``Clear()`` is File > Close Scene: StartCloseEvent, nodes removed, EndCloseEvent."""

    StartCloseEvent = 66
    EndCloseEvent = 67

    def __init__(self) -> None:
        self.nodes = []
        self.observers = {}
        self._next_tag = 1
        self.subject_hierarchy = vtkMRMLSubjectHierarchyNode()

    def AddObserver(self, event: int, callback) -> int:
        tag, self._next_tag = self._next_tag, self._next_tag + 1
        self.observers[tag] = (event, callback)
        return tag

    def RemoveObserver(self, tag: int) -> None:
        self.observers.pop(tag, None)

    def InvokeEvent(self, event: int) -> None:
        for observed, callback in list(self.observers.values()):
            if observed == event:
                callback(self, event)

    def AddNewNodeByClass(self, class_name: str, name: str = ""):
        return self.AddNode(NODE_CLASSES[class_name](name))

    def AddNode(self, node):
        self.nodes.append(node)
        if not isinstance(node, (vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeDisplayNode)):
            self.subject_hierarchy.CreateItem(self.subject_hierarchy.GetSceneItemID(), node)
        return node

    def RemoveNode(self, node) -> None:
        self.nodes.remove(node)
        self.subject_hierarchy.RemoveItemOfNode(node)

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

    def Clear(self, removeSingletons: int = 0) -> None:
        self.InvokeEvent(self.StartCloseEvent)
        self.nodes.clear()
        self.subject_hierarchy.Clear()
        self.InvokeEvent(self.EndCloseEvent)


class VolumesLogic:
    def CloneVolumeWithoutImageData(self, scene: Scene, volume, name: str):
        """As Slicer's: geometry, transform and a copy of the display node; the clone's item is under the scene."""
        clone = scene.AddNode(type(volume)(name))
        clone.CopyOrientation(volume)
        clone.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
        if volume.GetDisplayNode() is not None:
            clone.CreateDefaultDisplayNodes()
            source, display = volume.GetDisplayNode(), clone.GetDisplayNode()
            display.SetWindowLevel(source.GetWindow(), source.GetLevel())
            display.SetAutoWindowLevel(source.GetAutoWindowLevel())
        return clone


class _Modules:
    class volumes:
        logic = VolumesLogic


class App:
    """``slicer.app``: ``testing`` is what ``Slicer --testing`` switches on."""

    testing = False
    temporaryPath = tempfile.gettempdir()

    def testingEnabled(self) -> bool:
        return self.testing

    def connect(self, *args) -> None:
        pass


mrmlScene = Scene()
modules = _Modules()
app = App()

from . import util as util  # noqa: E402  (slicer.util is an attribute of slicer, as in Slicer)
