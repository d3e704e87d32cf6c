"""TEST STAND-IN for the package set of PythonSlicer (NOT 3D Slicer): runs a script as ``__main__`` with only the
given distributions, and what they require, importable. Every top-level module of any other installed distribution
raises ModuleNotFoundError when imported — at any time during the run, so lazy imports inside functions are caught as
they would fail in a fresh Slicer. (Versions are this environment's, not Slicer's: Slicer 5.10 has pydicom 2.4.4,
numpy 2.0.2, scipy 1.13.1.)

    python slicer_python.py DIST[,DIST...] SCRIPT [ARGS...]

At exit it prints ``SLICER-PYTHON refused: name,...`` (the modules it kept out) to stderr.
"""

import atexit
import importlib.abc
import importlib.metadata
import importlib.util
import re
import runpy
import sys

from packaging.requirements import Requirement


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_requirements(names: list[str]) -> set[str]:
    """The distributions ``names`` and everything they require (markers evaluated, no extras), canonical names."""
    found, todo = set(), list(names)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.add(name)
        for spec in distribution.requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


class RefuseOthers(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str]) -> None:
        self.refused: set[str] = set()
        self.blocked = {
            module
            for module, distributions in importlib.metadata.packages_distributions().items()
            if module not in sys.stdlib_module_names and not any(canonical(d) in allowed for d in distributions)
        }

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in self.blocked:
            self.refused.add(top)
            raise ModuleNotFoundError(f"No module named '{top}' (not in Slicer's Python)", name=top)
        return None


def main() -> None:
    allowed, script, *arguments = sys.argv[1:]
    finder = RefuseOthers(with_requirements(allowed.split(",")))
    sys.meta_path.insert(0, finder)
    find_spec = importlib.util.find_spec

    def find_spec_of_present(name, package=None):  # "is it installed?" answers no, as it would in Slicer
        return None if name.partition(".")[0] in finder.blocked else find_spec(name, package)

    importlib.util.find_spec = find_spec_of_present
    atexit.register(lambda: print("SLICER-PYTHON refused:", ",".join(sorted(finder.refused)), file=sys.stderr))
    sys.argv = [script, *arguments]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
