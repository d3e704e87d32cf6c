"""The Slicer extension's static files: the .ui is Qt Designer XML holding every widget the module uses and binding
exactly the parameter node's fields; the CMake files list every Python file and resource; the icon is a real PNG."""

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "MedDenoise"
SOURCE = (MODULE / "MedDenoise.py").read_text()


def ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(MODULE / "Resources" / "UI" / "MedDenoise.ui").getroot()
    assert root.tag == "ui" and root.get("version") == "4.0" and root.findtext("class") == "MedDenoise"
    return {widget.get("name"): widget for widget in root.iter("widget")}


def parameter_fields() -> set[str]:
    tree = ast.parse(SOURCE)
    wrapper = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedDenoiseParameterNode")
    return {statement.target.id for statement in wrapper.body if isinstance(statement, ast.AnnAssign)}


def test_every_widget_the_code_uses_exists_in_the_ui():
    widgets = ui_widgets()
    used = set(re.findall(r"self\.ui\.(\w+)", SOURCE))
    assert used and used <= set(widgets), f"missing in the .ui: {sorted(used - set(widgets))}"
    custom = {
        c.findtext("class") for c in ET.parse(MODULE / "Resources/UI/MedDenoise.ui").getroot().iter("customwidget")
    }
    assert {w.get("class") for w in widgets.values()} - custom <= {"QLabel", "QCheckBox", "QComboBox", "QLineEdit",
                                                                   "QSpinBox", "QPushButton", "QProgressBar"}  # fmt: skip


def test_ui_binds_exactly_the_parameter_node_fields():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = name
    assert set(bound) == parameter_fields()
    assert ui_widgets()[bound["customModelPath"]].get("class") == "ctkPathLineEdit"
    assert ui_widgets()[bound["strength"]].get("class") == "ctkSliderWidget"


def cmake_listed(cmake: str, variable: str) -> set[str]:
    block = re.search(rf"set\({variable}\n(.*?)\n  \)", cmake, re.S).group(1)
    return {line.strip().replace("${MODULE_NAME}", "MedDenoise") for line in block.splitlines() if line.strip()}


def test_cmake_lists_every_python_file_and_resource():
    cmake = (MODULE / "CMakeLists.txt").read_text()
    python_files = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*.py")}
    resources = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert cmake_listed(cmake, "MODULE_PYTHON_SCRIPTS") == python_files
    assert cmake_listed(cmake, "MODULE_PYTHON_RESOURCES") == resources
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    assert "Resources/MedDenoiseBundle" in cmake  # the packaging that find_shipped_bundle expects


def test_extension_cmake_has_the_extension_essentials():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for line in ("project(MedDenoise)", 'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
                 "include(${Slicer_USE_FILE})", "add_subdirectory(MedDenoise)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):  # fmt: skip
        assert line in cmake
    for variable in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', cmake)


def test_icon_is_a_128_pixel_png():
    with Image.open(MODULE / "Resources" / "Icons" / "MedDenoise.png") as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))
