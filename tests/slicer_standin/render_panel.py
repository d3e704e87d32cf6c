"""Render the MedDenoise panel from ``MedDenoise/Resources/UI/MedDenoise.ui`` with Qt offscreen into
``docs/slicer_panel.png`` (the README's picture), 380 px wide, with the texts the module itself puts in.

Slicer's CTK/MRML widgets (ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit, qMRMLNodeComboBox) are drawn by
small PySide6 look-alikes — a STAND-IN, NOT Slicer's widgets: the layout, labels, tooltips and order are the .ui's own.
PySide6 is not a project requirement; put it in any virtual environment of the same Python and run:

    python -m venv /tmp/pyside && /tmp/pyside/bin/pip install pyside6-essentials
    PYTHONPATH=/tmp/pyside/lib/python3.11/site-packages QT_QPA_PLATFORM=offscreen \\
        .venv/bin/python tests/slicer_standin/render_panel.py [OUTPUT.png]
"""

import importlib
import sys
from pathlib import Path

import numpy as np
from PySide6.QtCore import Property, QFile, Qt
from PySide6.QtGui import QPainter, QPalette
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import (
    QApplication,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLineEdit,
    QSlider,
    QStyle,
    QStyleOptionButton,
    QToolButton,
    QWidget,
)

ROOT = Path(__file__).resolve().parent.parent.parent
HEADER = 24


class ctkCollapsibleButton(QWidget):
    """A titled section; collapsed, only the title bar shows."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._text, self._collapsed = "", False

    def getText(self) -> str:
        return self._text

    def setText(self, text: str) -> None:
        self._text = text

    def isCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = collapsed

    text = Property(str, getText, setText)
    collapsed = Property(bool, isCollapsed, setCollapsed)

    def apply(self) -> None:
        layout = self.layout()
        if layout is not None:
            layout.setContentsMargins(6, HEADER + 4, 6, 6)
        for child in self.findChildren(QWidget, options=Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        if self._collapsed:
            self.setFixedHeight(HEADER)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        option = QStyleOptionButton()
        option.initFrom(self)
        option.rect = self.rect().adjusted(0, 0, 0, HEADER - self.height())
        option.text = ("▸ " if self._collapsed else "▾ ") + self._text
        self.style().drawControl(QStyle.CE_PushButton, option, painter, self)
        if not self._collapsed:
            painter.setPen(self.palette().color(QPalette.Mid))
            painter.drawRect(self.rect().adjusted(0, HEADER, -1, -1))


class ctkSliderWidget(QWidget):
    """A slider with a spin box."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.slider, self.spin = QSlider(Qt.Horizontal), QDoubleSpinBox()
        layout.addWidget(self.slider)
        layout.addWidget(self.spin)

    def _set(self, name, value) -> None:
        setattr(self, "_" + name, value)
        {"decimals": self.spin.setDecimals, "singleStep": self.spin.setSingleStep, "minimum": self.spin.setMinimum,
         "maximum": self.spin.setMaximum, "value": self.spin.setValue}[name](value)  # fmt: skip
        self.slider.setRange(0, 100)
        span = (self.spin.maximum() - self.spin.minimum()) or 1.0
        self.slider.setValue(round(100 * (self.spin.value() - self.spin.minimum()) / span))

    decimals = Property(int, lambda self: self.spin.decimals(), lambda self, v: self._set("decimals", v))
    singleStep = Property(float, lambda self: self.spin.singleStep(), lambda self, v: self._set("singleStep", v))
    minimum = Property(float, lambda self: self.spin.minimum(), lambda self, v: self._set("minimum", v))
    maximum = Property(float, lambda self: self.spin.maximum(), lambda self, v: self._set("maximum", v))
    value = Property(float, lambda self: self.spin.value(), lambda self, v: self._set("value", v))


class ctkPathLineEdit(QWidget):
    """A path box with a browse button."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.edit, button = QLineEdit(), QToolButton()
        self.edit.setPlaceholderText("(shipped model)")
        button.setText("...")
        layout.addWidget(self.edit)
        layout.addWidget(button)


class qMRMLNodeComboBox(QComboBox):
    """A node selector: the volumes of the scene, or its "none" text."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._none = ""

    def getNoneDisplay(self) -> str:
        return self._none

    def setNoneDisplay(self, text: str) -> None:
        self._none = text

    noneDisplay = Property(str, getNoneDisplay, setNoneDisplay)


class qMRMLWidget(QWidget):
    pass


def module_texts():
    """The module's own labels, read by importing MedDenoise.py against the test stand-in of slicer/qt/vtk."""
    sys.path[:0] = [str(ROOT / "tests" / "slicer_standin"), str(ROOT / "MedDenoise")]
    module = importlib.import_module("MedDenoise")
    logic = module.MedDenoiseLogic()
    return module, logic


def render(output: Path) -> None:
    app = QApplication.instance() or QApplication(["render_panel", "-platform", "offscreen"])
    app.setStyle("Fusion")
    module, logic = module_texts()
    loader = QUiLoader()
    for widget_class in (ctkCollapsibleButton, ctkSliderWidget, ctkPathLineEdit, qMRMLNodeComboBox, qMRMLWidget):
        loader.registerCustomWidget(widget_class)
    ui_file = QFile(str(ROOT / "MedDenoise" / "Resources" / "UI" / "MedDenoise.ui"))
    ui_file.open(QFile.ReadOnly)
    panel = loader.load(ui_file)
    ui_file.close()
    find = panel.findChild

    # What setup() and updateGUI() put in, for a loaded axial CT after a module enter.
    find(QComboBox, "inputSelector").addItem("CT chest")
    outputSelector = find(QComboBox, "outputSelector")
    outputSelector.addItem(outputSelector.noneDisplay)
    find(QComboBox, "referenceSelector").addItem("None")
    find(QComboBox, "viewsComboBox").addItems([views.label() for views in module.Views])
    find(QComboBox, "processorComboBox").addItems([processor.label() for processor in module.Processor])
    find(QComboBox, "axisComboBox").addItems(module.slicePlaneLabels(np.diag([-0.7, -0.7, 2.5, 1.0])))
    find(QComboBox, "noisePresetComboBox").addItems(logic.noisePresets())
    find(QComboBox, "noisePresetComboBox").setCurrentText(module.DEFAULT_NOISE)
    find(QLineEdit, "noiseSpecLineEdit").setText(module.DEFAULT_NOISE)
    find(QWidget, "applyButton").setEnabled(True)
    find(QWidget, "modelInfoLabel").setText(logic.modelInfo().description)
    find(QWidget, "gpuLabel").setText("No NVIDIA GPU found: runs on the CPU")
    find(QWidget, "noticeLabel").setText(module.NOT_FOR_DIAGNOSIS)
    find(ctkCollapsibleButton, "advancedCollapsibleButton").setCollapsed(False)  # shown open in the picture
    for section in panel.findChildren(ctkCollapsibleButton):
        section.apply()

    panel.setFixedWidth(380)
    panel.adjustSize()
    panel.resize(380, panel.sizeHint().height())
    panel.grab().save(str(output))
    print(f"{output}: {panel.width()} x {panel.height()} px")


if __name__ == "__main__":
    render(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "slicer_panel.png")
