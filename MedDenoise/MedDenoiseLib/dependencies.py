"""Python packages the worker needs, with version ranges taken from the bundle's metadata.

Rule: at least the minor series the bundle was made with, below the next major version (``monai_version`` 1.6.1 ->
``monai>=1.6,<2``). Torch is listed separately because Slicer installs it through the PyTorch extension.
"""

from __future__ import annotations

import importlib.metadata

#: Packages the worker imports that Slicer's Python does not ship (numpy and SimpleITK come with Slicer).
WORKER_PACKAGES = ("monai", "pyyaml")


def version_range(name: str, version: str) -> str:
    """``name>=MAJOR.MINOR,<MAJOR+1`` for a ``MAJOR.MINOR[.PATCH]`` version; just ``name`` when unknown."""
    parts = str(version).split("+")[0].split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return name
    return f"{name}>={parts[0]}.{parts[1]},<{int(parts[0]) + 1}"


def requirements(metadata: dict) -> dict[str, str]:
    """``{"torch": "torch>=2.13,<3", "monai": ..., "pyyaml": ...}`` from a bundle's metadata."""
    versions = {name.lower(): v for name, v in metadata.get("required_packages_version", {}).items()}
    versions["monai"] = metadata.get("monai_version", "")
    versions["torch"] = metadata.get("pytorch_version", "")
    return {name: version_range(name, versions.get(name, "")) for name in ("torch", *WORKER_PACKAGES)}


def unmet(requirement_specs: list[str]) -> list[str]:
    """The requirements (``pip`` syntax) that the current Python does not satisfy; nothing is imported."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # Slicer builds without the standalone package still have pip's vendored copy
        from pip._vendor.packaging.requirements import Requirement

    missing = []
    for spec in requirement_specs:
        requirement = Requirement(spec)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(spec)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(spec)
    return missing
