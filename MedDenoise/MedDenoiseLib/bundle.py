"""Where the module's bundle lives and whether a user's bundle (folder or .zip) is a usable MedDenoise model.

Packaging: the extension build copies the repository's ``bundle/`` (configs, scripts, default model, licence) into the
module's ``Resources/MedDenoiseBundle``; in a source checkout the module uses ``../bundle`` directly. The shipped
bundle provides the engine (its ``scripts`` package) for every run; a user's bundle only provides the network and
weights, which the engine loads through its allow-list (nothing in a foreign bundle is executed).
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

from .errors import ModuleError

#: Folder name of the shipped bundle inside the module's ``Resources`` (distinct from other extensions' resources).
BUNDLE_FOLDER = "MedDenoiseBundle"
METADATA = "configs/metadata.json"
WEIGHTS = ("models/model.pt", "models/model.ts")


def find_shipped_bundle(module_dir: str | os.PathLike) -> Path:
    """The bundle shipped with the module in ``module_dir`` (the folder of ``MedDenoise.py``).

    Looks in ``Resources/MedDenoiseBundle`` (built extension) and then ``../bundle`` (source checkout).
    """
    module_dir = Path(module_dir)
    candidates = (module_dir / "Resources" / BUNDLE_FOLDER, module_dir.parent / "bundle")
    for candidate in candidates:
        if (candidate / METADATA).is_file() and (candidate / "scripts" / "engine.py").is_file():
            return candidate
    raise ModuleError(
        f"the MedDenoise bundle is missing (looked in {', '.join(str(c) for c in candidates)}); "
        "reinstall the MedDenoise extension"
    )


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A validated model bundle: where it is and what its metadata says."""

    path: Path
    name: str
    version: str
    channels: int
    metadata: dict

    @property
    def description(self) -> str:
        """One line for the panel, e.g. ``MedDenoise multimodal denoising 0.10.0``."""
        return f"{self.name} {self.version}"


def read_model_info(path: str | os.PathLike) -> ModelInfo:
    """Validate a bundle folder or ``.zip`` against its metadata without loading any weights.

    Checks that ``configs/metadata.json`` is JSON, describes a single-image input (``network_data_format.inputs.image``
    with an odd channel count: 1 slice or 2k+1 neighbouring slices) scaled to [0, 1], and that weights
    (``models/model.pt`` or ``models/model.ts``) are present.

    Raises:
        ModuleError: naming the path and what is wrong with it.
    """
    path = Path(path)
    if not path.exists():
        raise ModuleError(f"{path}: no such bundle folder or .zip file; choose a MONAI bundle")
    if path.is_dir():
        members = {name for name in (METADATA, *WEIGHTS) if (path / name).is_file()}
        metadata_text = (path / METADATA).read_bytes() if METADATA in members else None
        prefix = ""
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            # A zipped bundle holds its files directly or inside one top folder named after the bundle.
            roots = sorted((m[: -len(METADATA)] for m in members if m.endswith(METADATA)), key=len)
            prefix = roots[0] if roots else ""
            metadata_text = archive.read(prefix + METADATA) if roots else None
    else:
        raise ModuleError(f"{path}: neither a bundle folder nor a .zip file; choose a MONAI bundle folder or zip")
    if metadata_text is None:
        raise ModuleError(f"{path}: not a MONAI bundle ({METADATA} is missing)")
    try:
        metadata = json.loads(metadata_text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModuleError(f"{path}: {METADATA} is not valid JSON ({error})") from None
    image = (
        metadata.get("network_data_format", {}).get("inputs", {}).get("image") if isinstance(metadata, dict) else None
    )
    if not isinstance(image, dict):
        raise ModuleError(f"{path}: {METADATA} has no network_data_format.inputs.image; not an image-to-image bundle")
    channels = image.get("num_channels", 1)
    if not isinstance(channels, int) or channels < 1 or channels % 2 == 0:
        raise ModuleError(
            f"{path}: the metadata says {channels!r} input channels; MedDenoise models take 1 slice or 2k+1 "
            "neighbouring slices"
        )
    if list(image.get("value_range", [0, 1])) != [0, 1]:
        raise ModuleError(f"{path}: the model expects values in {image['value_range']}; MedDenoise feeds [0, 1]")
    if not any(prefix + weights in members for weights in WEIGHTS):
        raise ModuleError(f"{path}: the bundle has no weights ({' or '.join(WEIGHTS)}); train or download them first")
    return ModelInfo(
        path=path,
        name=str(metadata.get("name", path.name)),
        version=str(metadata.get("version", "?")),
        channels=channels,
        metadata=metadata,
    )
