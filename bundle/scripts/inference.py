"""The bundle's ``inference.json`` as MONAI components around the file pipeline (:mod:`scripts.pipeline`).

>>> inferer = FileInferer(load_bundle(), output_dir="eval")   # one image file or DICOM series per data-list item
>>> inferer({"image": "ct_series/"}, network)                 # -> eval/ct_series_denoised.nii.gz, its path returned

A :class:`~monai.engines.SupervisedEvaluator` runs it over a ``Dataset`` of ``{"image": path}`` items, one item at a
time (:func:`single_item`, :func:`prepare_item`): the pipeline reads, checks, windows, denoises and writes each image
with the input's geometry, units and dtype. An image that cannot be read or is no grey image is logged and skipped,
so one bad file does not stop a folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import FolderLayout
from monai.inferers import Inferer

from . import pipeline
from .data import embedded_datalist, find_images
from .dicom_writer import is_dicom_input
from .engine import LoadedModel
from .errors import ImageReadError, InvalidImageError
from .image_io import stem

logger = logging.getLogger(__name__)


def inference_items(dataset_dir: str | os.PathLike | None) -> list[dict]:
    """Every image under ``dataset_dir`` (recursively; one item per file or DICOM series), or the embedded test split
    (one real CT, MR and X-ray image) when it is empty."""
    if not dataset_dir:
        return embedded_datalist()["test"]
    items = find_images(dataset_dir)
    if not items:
        raise ImageReadError(f"{dataset_dir}: no readable images found (searched recursively)")
    return items


def single_item(items: Sequence[dict]) -> dict:
    """``collate_fn`` for a ``DataLoader`` of batch size 1: images differ in shape, so each runs on its own."""
    (item,) = items
    return item


def prepare_item(batch: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> tuple:
    """``prepare_batch`` of the evaluator: the data-list item itself (the pipeline reads the image, and moves one
    batch of slices at a time to the network's device)."""
    return batch, None, (), {}


class LoggedProgress(pipeline.Progress):
    """The pipeline's stages as log lines (the evaluator's progress bar counts the files)."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int, run: pipeline.DenoisedFile):
        if name == "adapt":
            logger.info(f"{run.source}: {run.level}; adapting to it for {total / 1000:g} s")
        else:
            logger.info(f"{run.source}: {run.level}; denoising {total} slice(s) on {run.model.device}")
        yield lambda done, total: None


class FileInferer(Inferer):
    """Denoise one data-list item (``{"image": path}``, ``"series_uid"`` picking a series of a folder) with
    :func:`scripts.pipeline.denoise_file` into ``output_dir/[sub-folder/]NAME_postfix.ext`` (MONAI's
    :class:`~monai.data.FolderLayout`, as ``SaveImage``); the format follows ``output_ext``. ``data_root_dir`` is the
    folder the images were found in: its sub-folders are kept so images of the same name in different folders do not
    collide, and several DICOM series of one folder are numbered. With ``output_dicom`` a DICOM input becomes a
    derived DICOM series instead, the folder ``NAME_postfix/``. Returns the path written, ``None`` for an image that
    was skipped; ``self.written`` lists them all.

    Args:
        model: the loaded bundle (:func:`scripts.engine.load_bundle`); the network the evaluator passes in replaces
            its network, so ``SupervisedEvaluator(network=...)`` is the one that runs.
        settings: how to denoise (:class:`scripts.pipeline.DenoiseSettings`).
    """

    def __init__(
        self,
        model: LoadedModel,
        settings: pipeline.DenoiseSettings,
        output_dir: str | os.PathLike,
        output_postfix: str = "denoised",
        output_ext: str = ".nii.gz",
        data_root_dir: str | os.PathLike = "",
        output_dicom: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.settings, self.output_dicom = model, settings, output_dicom
        self.layout = FolderLayout(
            output_dir, postfix=output_postfix, extension=output_ext, makedirs=True, data_root_dir=data_root_dir
        )
        self.planned: list[Path] = []
        self.written: list[Path] = []

    def target(self, source: str) -> Path:
        """Where ``source``'s result goes: the layout's name, numbered when an earlier item of this run took it."""
        target = Path(self.layout.filename(subject=source))
        if target in self.planned:
            index = sum(path.parent == target.parent for path in self.planned)
            target = Path(self.layout.filename(subject=source, idx=index))
        self.planned.append(target)
        return target

    def __call__(self, item: Mapping, network: torch.nn.Module) -> Path | None:
        source = str(item["image"])
        target = self.target(source)
        dicom = self.output_dicom and is_dicom_input(source)
        model = dataclasses.replace(self.model, network=network)
        try:
            run = pipeline.denoise_file(
                source,
                target.with_name(stem(target)) if dicom else target,
                model,
                self.settings,
                LoggedProgress(),
                dicom=dicom,
                series_uid=item.get("series_uid"),
            )
        except (ImageReadError, InvalidImageError) as error:
            logger.warning(f"skipping {source}: {error}")
            return None
        self.written.append(run.target)
        return run.target
