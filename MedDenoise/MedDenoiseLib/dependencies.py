"""Python packages the worker needs, with version ranges taken from the bundle's metadata.

Slicer's Python ships some packages (:data:`SLICER_BUNDLED`); the module installs the rest (:data:`WORKER_PACKAGES`,
and torch through the PyTorch extension). ``tests/test_slicer_worker_env.py`` runs the worker with nothing else
importable, so a new import in the bundle's code fails there before it fails in a clinician's Slicer.

Rule: at least the minor series the bundle was made with, below the next major version (``monai_version`` 1.6.1 ->
``monai>=1.6,<2``).
"""

from __future__ import annotations

import importlib.metadata

#: Distributions in Slicer's own Python (Slicer 5.10 to 5.13 SuperBuild: ``External_python-numpy``, ``-scipy``,
#: ``External_SimpleITK``, ``-dicom-requirements``, ``-requests-requirements``, ``-pythonqt-requirements``, pip,
#: setuptools, wheel). Slicer 5.10 pins pydicom 2.4.4, numpy 2.0.2 and scipy 1.13.1.
SLICER_BUNDLED = (
    "numpy",
    "scipy",
    "SimpleITK",
    "pydicom",
    "pillow",
    "dicomweb-client",
    "requests",
    "packaging",
    "pip",
    "setuptools",
    "wheel",
)
#: Distributions the module installs with pip (names as in the bundle's ``required_packages_version``); torch comes
#: separately from the PyTorch extension, which matches it to the GPU.
WORKER_PACKAGES = ("monai", "pyyaml", "PyWavelets", "tqdm")


def version_range(name: str, version: str) -> str:
    """``name>=MAJOR.MINOR,<MAJOR+1`` for a ``MAJOR.MINOR[.PATCH]`` version; just ``name`` when unknown."""
    parts = str(version).split("+")[0].split(".")
    if len(parts) < 2 or not (parts[0].isdigit() and parts[1].isdigit()):
        return name
    return f"{name}>={parts[0]}.{parts[1]},<{int(parts[0]) + 1}"


def requirements(metadata: dict) -> dict[str, str]:
    """``{"torch": "torch>=2.13,<3", "monai": ..., "pyyaml": ..., "PyWavelets": ..., "tqdm": ...}`` from a bundle's
    metadata."""
    versions = {name.lower(): v for name, v in metadata.get("required_packages_version", {}).items()}
    versions["monai"] = metadata.get("monai_version", "")
    versions["torch"] = metadata.get("pytorch_version", "")
    return {name: version_range(name, versions.get(name.lower(), "")) for name in ("torch", *WORKER_PACKAGES)}


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
