"""Batch inference for the bundle's ``inference.yaml``: every image of a folder through the slice engine, written
SaveImage-style (MONAI's :class:`~monai.data.FolderLayout`: ``output_dir/[relative folder/]name_postfix.ext``) with the
input's geometry, units and dtype.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from monai.data import FolderLayout
from tqdm import tqdm

from .data import embedded_datalist, find_images
from .engine import LoadedModel, denoise_volume
from .errors import ImageReadError, InvalidImageError
from .image_io import read_image, write_image
from .intensity import IntensityWindow


def inference_items(dataset_dir: str | os.PathLike | None) -> list[dict]:
    """Every image under ``dataset_dir`` (recursively; one item per file or DICOM series), or the embedded test split
    (one real CT, MR and X-ray image) when it is empty."""
    if not dataset_dir:
        return embedded_datalist()["test"]
    items = find_images(dataset_dir)
    if not items:
        raise ImageReadError(f"{dataset_dir}: no readable images found (searched recursively)")
    return items


def denoise_items(
    items: Sequence[dict],
    model: LoadedModel,
    output_dir: str | os.PathLike,
    postfix: str = "denoised",
    extension: str = ".nii.gz",
    data_root_dir: str | os.PathLike = "",
    window: Sequence[float] | None = None,
    axis: int = 0,
    batch_size: int = 8,
    strength: float = 1.0,
) -> list[Path]:
    """Denoise each item (``{"image": path[, "series_uid": uid]}``) with :func:`denoise_volume` and write it.

    Args:
        data_root_dir: the folder the items were found in; its sub-folders are kept under ``output_dir`` so images of
            the same name in different folders do not collide (as ``SaveImage(data_root_dir=...)``).
        window: ``[LOW, HIGH]`` in native units for every image; None = each image's own window, as in training.

    Items that cannot be read or denoised are reported and skipped, so one bad file does not stop a folder.
    Returns the written files.
    """
    layout = FolderLayout(output_dir, postfix=postfix, extension=extension, makedirs=True, data_root_dir=data_root_dir)
    intensity = IntensityWindow(*window) if window is not None else None
    written: list[Path] = []
    for item in tqdm(items, desc="denoising", unit="image"):
        # A folder may hold several DICOM series; number the later ones instead of overwriting the first.
        target = Path(layout.filename(subject=item["image"]))
        if target in written:
            target = Path(
                layout.filename(subject=item["image"], idx=sum(path.parent == target.parent for path in written))
            )
        try:
            volume = read_image(item["image"], item.get("series_uid"))
            denoised = denoise_volume(
                volume.array, model, window=intensity, axis=axis, batch_size=batch_size, strength=strength
            )
        except (ImageReadError, InvalidImageError) as error:
            tqdm.write(f"skipping {item['image']}: {error}")
            continue
        written.append(write_image(target, denoised, like=volume))
    return written
