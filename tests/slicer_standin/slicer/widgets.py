"""TEST STAND-IN for the widgets ``slicer.util.loadUI`` builds from a .ui file (NOT Qt, NOT PythonQt): each widget
accepts only the Qt properties and methods its class has in PythonQt (a misspelt or missing one raises
AttributeError, as a real panel would at run time), emits the signals the module connects to, and holds the .ui's
property values. Layout and drawing are not imitated (``render_panel.py`` draws the .ui with real Qt)."""

import inspect
import xml.etree.ElementTree as ET

COMMON = {"enabled", "toolTip", "visible", "styleSheet", "geometry", "SlicerParameterName"}
PROPERTIES = {
    "QLabel": {"text", "wordWrap", "textInteractionFlags"},
    "QPushButton": {"text", "checkable", "checked"},
    "QCheckBox": {"text", "checked"},
    "QProgressBar": {"value", "minimum", "maximum", "textVisible"},
    "QPlainTextEdit": {"plainText", "readOnly"},
    "QLineEdit": {"text"},
    "QSpinBox": {"value", "minimum", "maximum", "singleStep", "suffix", "specialValueText"},
    "QComboBox": {"currentIndex", "currentText"},
    "ctkCollapsibleButton": {"text", "collapsed"},
    "ctkSliderWidget": {"value", "minimum", "maximum", "singleStep", "decimals"},
    "ctkPathLineEdit": {"currentPath", "filters", "nameFilters"},
    "qMRMLNodeComboBox": {
        "nodeTypes",
        "showChildNodeTypes",
        "addEnabled",
        "removeEnabled",
        "noneEnabled",
        "noneDisplay",
        "renameEnabled",
    },
    "qMRMLWidget": set(),
}
SIGNALS = {
    "QPushButton": {"clicked(bool)", "toggled(bool)"},
    "QComboBox": {"activated(int)", "currentIndexChanged(int)", "currentTextChanged(QString)"},
    "ctkPathLineEdit": {"currentPathChanged(QString)"},
}


class Widget:
    def __init__(self, cls: str, name: str, properties: dict) -> None:
        object.__setattr__(self, "_cls", cls)
        object.__setattr__(self, "_slots", {})
        object.__setattr__(self, "_props", {"enabled": True, "currentPath": "", "plainText": "", "checked": False,
                                            "textVisible": True, "value": 0, "maximum": 100, "text": ""})  # fmt: skip
        object.__setattr__(self, "_items", [])
        object.__setattr__(self, "name", name)
        self._props.update(properties)

    def _allowed(self) -> set[str]:
        return COMMON | PROPERTIES[self._cls]

    def __getattr__(self, name):
        if name in self._allowed():
            if name == "currentIndex":
                return self._props.get("currentIndex", 0 if self._items else -1)
            return self._props.get(name)
        raise AttributeError(f"{self._cls} has no property or method {name!r}")

    def __setattr__(self, name, value) -> None:
        if name not in self._allowed():
            raise AttributeError(f"{self._cls} has no property {name!r}")
        changed = self._props.get(name) != value
        self._props[name] = value
        if name == "checked" and changed:
            self._emit("toggled(bool)", value)
        if name == "currentPath" and changed:
            self._emit("currentPathChanged(QString)", value)

    def connect(self, signal: str, slot) -> None:
        if signal not in SIGNALS.get(self._cls, ()):
            raise AttributeError(f"{self._cls} has no signal {signal}")
        self._slots.setdefault(signal, []).append(slot)

    def _emit(self, signal: str, *args) -> None:
        for slot in self._slots.get(signal, []):
            # PythonQt passes a slot only as many of the signal's arguments as it takes (the template's
            # ``onApplyButton(self)`` is connected to ``clicked(bool)``).
            parameters = inspect.signature(slot).parameters.values()
            varargs = any(p.kind == p.VAR_POSITIONAL for p in parameters)
            slot(*(args if varargs else args[: len(parameters)]))

    def _require(self, *classes) -> None:
        if self._cls not in classes:
            raise AttributeError(f"{self._cls} has no such method")

    # QPushButton
    def click(self) -> None:
        self._require("QPushButton")
        if self._props["enabled"]:
            if self._props.get("checkable"):
                self.checked = not self._props["checked"]
            self._emit("clicked(bool)", self._props["checked"])

    # QProgressBar
    def setValue(self, value: int) -> None:
        self._require("QProgressBar")
        self._props["value"] = value

    def setMaximum(self, value: int) -> None:
        self._require("QProgressBar")
        self._props["maximum"] = value

    # QPlainTextEdit
    def appendPlainText(self, text: str) -> None:
        self._require("QPlainTextEdit")
        self._props["plainText"] += ("\n" if self._props["plainText"] else "") + text

    def clear(self) -> None:
        self._require("QPlainTextEdit")
        self._props["plainText"] = ""

    # QComboBox
    def addItems(self, texts) -> None:
        self._require("QComboBox")
        self._items.extend(texts)

    def itemText(self, index: int) -> str:
        self._require("QComboBox")
        return self._items[index] if 0 <= index < len(self._items) else ""

    def setItemText(self, index: int, text: str) -> None:
        self._require("QComboBox")
        if 0 <= index < len(self._items):
            self._items[index] = text

    def findText(self, text: str) -> int:
        self._require("QComboBox")
        return self._items.index(text) if text in self._items else -1

    def setCurrentIndex(self, index: int) -> None:
        self._require("QComboBox")
        self._props["currentIndex"] = index

    def choose(self, index: int) -> None:
        """What a user's pick does: the index changes and ``activated(int)`` fires."""
        self.setCurrentIndex(index)
        self._emit("activated(int)", index)

    # qMRMLWidget
    def setMRMLScene(self, scene) -> None:
        self._require("qMRMLWidget", "qMRMLNodeComboBox")

    # a widget's layout (ScriptedLoadableModuleWidget puts the panel in it)
    def layout(self):
        return self

    def addWidget(self, widget) -> None:
        pass


def load_ui(path) -> Widget:
    """The .ui's widgets with their properties; ``children`` maps names to widgets (``childWidgetVariables``)."""
    widgets = {}
    for element in ET.parse(path).getroot().iter("widget"):
        properties = {}
        for prop in element.findall("property"):
            value = prop[0] if len(prop) else None
            if value is not None and value.tag in ("string", "bool", "number", "double"):
                text = value.text or ""
                convert = {"bool": lambda t: t == "true", "number": int, "double": float, "string": str}[value.tag]
                properties[prop.get("name")] = convert(text)
        if element.get("class") not in PROPERTIES:
            raise AssertionError(f"the stand-in does not know {element.get('class')}")
        widgets[element.get("name")] = Widget(element.get("class"), element.get("name"), properties)
    root = next(iter(widgets.values()))
    object.__setattr__(root, "children", widgets)
    return root
