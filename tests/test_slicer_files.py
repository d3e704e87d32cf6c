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
                                                                   "QSpinBox", "QPushButton", "QProgressBar",
                                                                   "QPlainTextEdit"}  # fmt: skip


def test_ui_binds_exactly_the_parameter_node_fields():
    bound = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = name
    # modelPath is a str connected by hand: Slicer binds a path box only to a Path field, which shows "" as ".".
    assert set(bound) == parameter_fields() - {"modelPath"}
    assert 'modelPathLineEdit.connect("currentPathChanged(QString)"' in SOURCE
    assert ui_widgets()[bound["strength"]].get("class") == "ctkSliderWidget"


def properties(widget: ET.Element) -> dict[str, str]:
    return {p.get("name"): "".join(p.itertext()).strip() for p in widget.findall("property")}


def test_panel_puts_the_everyday_settings_first_and_the_rest_under_advanced():
    root = ET.parse(MODULE / "Resources" / "UI" / "MedDenoise.ui").getroot()
    main = root.find("widget/layout")
    top_form = main.find("item/layout[@name='denoiseLayout']")
    top = [w.get("name") for w in top_form.iter("widget") if w.get("class") != "QLabel"]
    assert top == ["inputSelector", "outputSelector", "strengthSliderWidget", "viewsComboBox"]
    sections = {w.get("name"): w for w in main.findall("item/widget")}
    advanced = sections["advancedCollapsibleButton"]
    assert properties(advanced)["collapsed"] == "true"
    inside = {w.get("name") for w in advanced.iter("widget")}
    assert {"modelPathLineEdit", "referenceSelector", "adaptSecondsSpinBox", "processorComboBox", "gpuLabel",
            "axisComboBox", "allowInputOverwriteCheckBox"} <= inside  # fmt: skip
    order = list(sections)
    assert order.index("applyButton") < order.index("advancedCollapsibleButton")
    # A collapsible log, the one-click switch, the notice; no idle "0%"; one "Create new volume", no cut-off labels.
    assert sections["logCollapsibleButton"].find(".//widget[@name='logTextEdit']").get("class") == "QPlainTextEdit"
    assert properties(sections["compareButton"])["checkable"] == "true"
    assert properties(sections["noticeLabel"])["text"] == "For research and viewing only; not for diagnosis."
    assert 'NOT_FOR_DIAGNOSIS = "For research and viewing only; not for diagnosis."' in SOURCE
    assert properties(sections["progressBar"])["textVisible"] == "false"
    output = properties(ui_widgets()["outputSelector"])
    assert output["noneDisplay"] == "Create new volume" and output["addEnabled"] == "false"
    labels = [properties(w) for w in ui_widgets().values() if w.get("class") == "QLabel"]
    unwrapped = [label.get("text", "") for label in labels if label.get("wordWrap") != "true"]
    assert max(map(len, unwrapped)) <= 16, unwrapped  # a 380 px panel shows form labels whole
    assert "foregroundOpacity" not in SOURCE  # the result is shown fully, never as a half-transparent overlay


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


def cmake_bundle_install_list() -> set[str]:
    """The bundle files the extension build copies and installs: ``MedDenoise/CMakeLists.txt``'s
    ``file(GLOB_RECURSE BUNDLE_FILES RELATIVE ...)`` patterns expanded as CMake does (a pattern matches files at any
    depth below its folder), relative to the folder ``BUNDLE_SOURCE_DIR`` names."""
    cmake = (MODULE / "CMakeLists.txt").read_text()
    source = re.search(r"set\(BUNDLE_SOURCE_DIR \$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)", cmake).group(1)
    root = (MODULE / source).resolve()
    block = re.search(r"file\(GLOB_RECURSE BUNDLE_FILES RELATIVE \$\{BUNDLE_SOURCE_DIR\}\n(.*?)\n  \)", cmake, re.S)
    files = set()
    for line in block.group(1).split():
        folder, _, pattern = line.removeprefix("${BUNDLE_SOURCE_DIR}/").rpartition("/")
        files |= {path.relative_to(root).as_posix() for path in (root / folder).rglob(pattern) if path.is_file()}
    return files


def test_extension_installs_the_bundle_but_no_research_or_experiment_log():
    from conftest import BUNDLE, research_contents

    installed = cmake_bundle_install_list()
    assert {"configs/inference.json", "scripts/engine.py", "models/model.pt", "docs/README.md", "LICENSE"} <= installed
    research = research_contents()
    assert not [name for name in installed if (BUNDLE / name).read_bytes() in research]
    assert not [name for name in installed if "experiment" in name.lower()]


def test_extension_cmake_has_the_extension_essentials():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for line in ("project(MedDenoise)", 'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)",
                 "include(${Slicer_USE_FILE})", "add_subdirectory(MedDenoise)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):  # fmt: skip
        assert line in cmake
    for variable in ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', cmake)
    # No made-up addresses: the links follow the published repository's URL and name files that exist.
    for variable in ("ICONURL", "SCREENSHOTURLS"):
        path = re.search(rf'set\(EXTENSION_{variable} "\$\{{MEDDENOISE_REPOSITORY_URL\}}/([^"]+)"\)', cmake).group(1)
        assert (ROOT / path).is_file(), path
    assert 'set(EXTENSION_CATEGORY "Filtering")' in cmake
    assert (ROOT / "LICENSE").is_file()  # the extension's own licence (the bundle has its own)
    assert "add_subdirectory(Testing)" in (MODULE / "CMakeLists.txt").read_text()
    assert (MODULE / "Testing" / "CMakeLists.txt").is_file()


def test_module_loads_on_python_3_9_to_say_it_needs_slicer_5_10():
    """Slicer 5.8 has Python 3.9: `X | Y` annotations only load there when they stay text."""
    for path in MODULE.rglob("*.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        unions = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr)
                  and any(n in ast.walk(a) for a in annotations(tree))]  # fmt: skip
        future = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in tree.body)
        assert future or not unions, f"{path.name}: add 'from __future__ import annotations'"


def annotations(tree: ast.AST) -> list[ast.AST]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            found.append(node.annotation)
    return [a for a in found if a is not None]


def test_icon_is_a_128_pixel_png():
    with Image.open(MODULE / "Resources" / "Icons" / "MedDenoise.png") as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))
