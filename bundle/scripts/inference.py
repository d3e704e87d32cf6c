"""The steps of the bundle's ``inference.json``, each a MONAI component: load -> window -> slice inferer -> save.

>>> preprocessing = Compose([LoadVolumed("image"), IntensityWindowd("image")])  # a path -> native units + window
>>> inferer = SliceInferer(load_bundle())    # the slice engine: [0, 1] window, network, back to native units
>>> SaveVolumed("pred", "out")               # written SaveImage-style with the input's geometry, units and dtype

A :class:`~monai.engines.SupervisedEvaluator` runs them over a ``Dataset`` of ``{"image": path}`` items, one image at a
time (:func:`single_item`, :func:`prepare_volume`). An image that cannot be read or is no grey image is reported and
skipped (its ``image`` becomes ``None``), so one bad file does not stop a folder.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import FolderLayout
from monai.inferers import Inferer
from monai.transforms import MapTransform
from tqdm import tqdm

from .data import embedded_datalist, find_images
from .dicom_writer import Derivation, dicom_files, is_dicom_input, write_derived_series
from .engine import LoadedModel, denoise_volume
from .errors import ImageReadError, InvalidImageError
from .image_io import read_image, stem, write_image
from .intensity import IntensityWindow
from .slices import check_volume

#: Where :class:`LoadVolumed` keeps an image's path and geometry (a :class:`scripts.image_io.Volume`) and
#: :class:`IntensityWindowd` its window: ``f"{key}{postfix}"``, MONAI's ``image_meta_dict`` style.
PATH_POSTFIX = "_path"
VOLUME_POSTFIX = "_volume"
WINDOW_POSTFIX = "_window"


def inference_items(dataset_dir: str | os.PathLike | None) -> list[dict]:
    """Every image under ``dataset_dir`` (recursively; one item per file or DICOM series), or the embedded test split
    (one real CT, MR and X-ray image) when it is empty."""
    if not dataset_dir:
        return embedded_datalist()["test"]
    items = find_images(dataset_dir)
    if not items:
        raise ImageReadError(f"{dataset_dir}: no readable images found (searched recursively)")
    return items


def _skip(data: dict, key: Hashable, error: Exception) -> dict:
    tqdm.write(f"skipping {data[f'{key}{PATH_POSTFIX}']}: {error}")
    return {**data, key: None}


class LoadVolumed(MapTransform):
    """Read ``data[key]`` (an image file or DICOM series folder; ``data["series_uid"]`` picks a series) with
    :func:`scripts.image_io.read_image`: ``data[key]`` becomes the K x J x I (or J x I) array in native units and
    ``data[key + "_volume"]`` its :class:`~scripts.image_io.Volume` (geometry, modality); ``data[key + "_path"]``
    keeps the path. An unreadable image is reported and its ``data[key]`` set to ``None``."""

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[f"{key}{PATH_POSTFIX}"] = str(d[key])
            try:
                volume = read_image(d[key], d.get("series_uid"))
            except (ImageReadError, InvalidImageError) as error:
                d = _skip(d, key, error)
                continue
            d[key], d[f"{key}{VOLUME_POSTFIX}"] = volume.array, volume
        return d


class IntensityWindowd(MapTransform):
    """Check that ``data[key]`` is a grey image sliceable along ``axis`` (:func:`scripts.slices.check_volume`) and
    choose the native-units window the slice engine maps to [0, 1]: ``window`` ``[LOW, HIGH]`` for every image, or
    ``None`` for each image's own (:meth:`IntensityWindow.from_data`, as in training). The window goes to
    ``data[key + "_window"]``; the scaling itself happens batch by batch in :class:`SliceInferer`, so a whole scaled
    copy of a volume (300 MB for a 300-slice float32 CT) is never held. An invalid image is reported and skipped."""

    def __init__(self, keys: KeysCollection, window: Sequence[float] | None = None, axis: int = 0) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.window = IntensityWindow(*window) if window is not None else None
        self.axis = axis

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                continue
            try:
                d[f"{key}{WINDOW_POSTFIX}"] = self.window or IntensityWindow.from_data(check_volume(d[key], self.axis))
            except InvalidImageError as error:
                d = _skip(d, key, error)
        return d


def single_item(items: Sequence[dict]) -> dict:
    """``collate_fn`` for a ``DataLoader`` of batch size 1: volumes differ in shape, so each runs on its own."""
    (item,) = items
    return item


def prepare_volume(batch: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
    """``prepare_batch`` of the evaluator: the item's native-units array (left on the CPU: the slice engine moves one
    batch of slices at a time to the network's device) and its window for the inferer."""
    return batch["image"], None, (), {"window": batch.get(f"image{WINDOW_POSTFIX}")}


class SliceInferer(Inferer):
    """Denoise a whole volume with the slice engine (:func:`scripts.engine.denoise_volume`): slices along ``axis`` in
    batches of ``batch_size``, each mapped to [0, 1] by the window, run through the network (with the model's
    precision, neighbouring-slice context and blind-spot blending) and mapped back to native units, blended with the
    input by ``strength``. Returns an array of the input's shape, units and dtype (``None`` for a skipped item).

    Args:
        model: the loaded bundle (:func:`scripts.engine.load_bundle`); the network the evaluator passes in replaces
            its network, so ``SupervisedEvaluator(network=...)`` is the one that runs.
    """

    def __init__(self, model: LoadedModel, axis: int = 0, batch_size: int | None = None, strength: float = 1.0) -> None:
        super().__init__()
        self.model, self.axis, self.batch_size, self.strength = model, axis, batch_size, strength

    def __call__(
        self, inputs: np.ndarray | None, network: torch.nn.Module, window: IntensityWindow | None = None
    ) -> np.ndarray | None:
        if inputs is None:
            return None
        model = dataclasses.replace(self.model, network=network)
        return denoise_volume(
            inputs, model, window=window, axis=self.axis, batch_size=self.batch_size, strength=self.strength
        )


class SaveVolumed(MapTransform):
    """Write ``data[key]`` with the geometry of ``data["image_volume"]`` to
    ``output_dir/[sub-folder/]NAME_postfix.ext`` (MONAI's :class:`~monai.data.FolderLayout`, as ``SaveImage``); the
    format follows ``output_ext``. ``data_root_dir`` is the folder the images were found in: its sub-folders are kept
    so images of the same name in different folders do not collide. Several DICOM series of one folder are numbered
    instead of overwriting each other. With ``output_dicom`` a DICOM input becomes a derived DICOM series instead, the
    folder ``NAME_postfix/`` (:func:`scripts.dicom_writer.write_derived_series`, recording ``derivation``).
    ``self.written`` lists the files and series folders written."""

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        output_postfix: str = "denoised",
        output_ext: str = ".nii.gz",
        data_root_dir: str | os.PathLike = "",
        output_dicom: bool = False,
        derivation: Derivation | None = None,
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.output_dicom, self.derivation = output_dicom, derivation or Derivation()
        self.layout = FolderLayout(
            output_dir, postfix=output_postfix, extension=output_ext, makedirs=True, data_root_dir=data_root_dir
        )
        self.written: list[Path] = []

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                continue
            source = d[f"image{PATH_POSTFIX}"]
            target = Path(self.layout.filename(subject=source))
            if target in self.written:
                index = sum(path.parent == target.parent for path in self.written)
                target = Path(self.layout.filename(subject=source, idx=index))
            if self.output_dicom and is_dicom_input(source):
                sources = dicom_files(source, d.get("series_uid"))
                folder = target.with_name(stem(target))
                write_derived_series(folder, d[key], sources, self.derivation, overwrite=True, original=d["image"])
                self.written.append(folder)
            else:
                self.written.append(write_image(target, d[key], like=d[f"image{VOLUME_POSTFIX}"]))
        return d
