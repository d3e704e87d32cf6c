"""TEST STAND-IN for ``slicer.packaging`` (NOT 3D Slicer; Slicer 5.12+): ``pip_ensure`` as in Slicer — it skips
installation in testing mode, asks first, raises RuntimeError when the user declines — installing into the imitated
environment of :mod:`slicer.util`. Slicer never imports this module by itself."""

import slicer


def _name(requirement: str) -> str:
    return requirement.split(">")[0].split("<")[0].split("=")[0].split("[")[0].lower()


def pip_install(requirements, constraints=None, no_deps_requirements=None, skip_packages=None, blocking=True,
                show_progress=True, requester=None):  # fmt: skip
    slicer.util._install("slicer.packaging.pip_install", requirements, constraints=constraints)


def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
               requester=None, skip_in_testing=True, show_progress=True):  # fmt: skip
    requirements = requirements.split() if isinstance(requirements, str) else list(requirements)
    missing = [r for r in requirements if _name(r) not in slicer.util.environment]
    if not missing:
        return None
    if skip_in_testing and slicer.app.testingEnabled():
        return None
    if prompt_install and not slicer.util.confirmOkCancelDisplay(
        f"{len(missing)} Python packages need to be installed"
    ):
        raise RuntimeError("User declined package installation")
    pip_install(missing, constraints=constraints, requester=requester)
    return None
