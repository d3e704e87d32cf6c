"""Denoise one image file: the one sequence behind the command line, the Slicer worker and ``inference.json``.

read -> check -> window -> noise level -> [adapt to the scan] -> denoise -> write (an image file, or a derived DICOM
series). Each caller parses its own arguments and shows progress its own way (a :class:`Progress`); the work is here.

>>> run = denoise_file("ct.nii.gz", "ct_denoised.nii.gz", load_bundle(), DenoiseSettings(strength=0.8))
>>> print(run.level, run.target)   # noise sigma 21.4 (0.052 of the window [-160, 240]) ct_denoised.nii.gz
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .dicom_writer import Derivation, dicom_files, write_derived_series
from .engine import TILE, LoadedModel, ProgressCallback, denoise_volume
from .errors import InvalidImageError
from .image_io import Volume, check_writable, extension, format_problem, read_image, stem, write_image
from .intensity import IntensityWindow
from .noise_level import MIN_SIDE, NoiseLevel, estimate_noise_level
from .selfsupervised import adapt_model
from .slices import checked_once


@dataclasses.dataclass(frozen=True)
class DenoiseSettings:
    """How to denoise, the same for every file of a run.

    ``window``: native-units ``[LOW, HIGH]`` mapped to [0, 1] (an :class:`IntensityWindow` or two numbers), ``None``
    for each image's own (:meth:`IntensityWindow.from_data`, as in training). ``axis``, ``strength``, ``views`` (the
    self-ensemble), ``batch_size`` (``None``: the engine's pixel budget, :data:`scripts.engine.BATCH_PIXELS`), ``tile``
    (the largest pass, :data:`scripts.engine.TILE`) and ``float_output`` as for :func:`scripts.engine.denoise_volume`.
    ``adapt_seconds`` > 0 first fine-tunes a copy of the model on each image's own noise
    (:func:`scripts.selfsupervised.adapt_model`). ``overwrite`` replaces existing
    outputs; ``max_bytes`` bounds a decoded input (:func:`scripts.image_io.read_image`).
    """

    window: IntensityWindow | Sequence[float] | None = None
    axis: int = 0
    strength: float = 1.0
    views: int = 1
    batch_size: int | None = None
    tile: int = TILE
    float_output: bool = False
    adapt_seconds: float = 0.0
    overwrite: bool = True
    max_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.window is not None and not isinstance(self.window, IntensityWindow):
            object.__setattr__(self, "window", IntensityWindow(*self.window))

    @property
    def details(self) -> str:
        """How the images were denoised, for a derived DICOM series' Derivation Description."""
        views = f", self-ensemble of {self.views} views" if self.views > 1 else ""
        adapted = ", adapted to the scan" if self.adapt_seconds else ""
        return f"strength {self.strength:g}{views}{adapted}"


@dataclasses.dataclass
class DenoisedFile:
    """One file's run, filled in as it goes: ``volume`` as read, its ``level`` of noise, the ``model`` that denoised
    it (the given one or, after adaptation, the one ``metadata["adaptation"]`` describes), the ``denoised`` array
    (the input's shape; its dtype unless ``float_output``), the ``target`` written and its number of ``slices``."""

    source: Path
    target: Path
    model: LoadedModel
    volume: Volume
    slices: int = 1
    level: NoiseLevel | None = None
    denoised: np.ndarray | None = None


class Progress:
    """How a caller shows the pipeline's work; this one shows nothing.

    :meth:`read` sees each file once it is read and checked, before any work (a caller may refuse it there);
    :meth:`stage` opens each long stage: ``"adapt"`` (``total`` in milliseconds) and ``"denoise"`` (``total`` slices).
    """

    def read(self, run: DenoisedFile) -> None:
        """Called before any work on ``run.volume``; raise a :class:`scripts.errors.MedDenoiseError` to refuse it."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int, run: DenoisedFile) -> Iterator[ProgressCallback]:
        """A context for one stage that yields its ``progress(done, total)`` callback (returning ``False`` cancels)."""
        yield lambda done, total: None


def denoise_file(
    source: str | os.PathLike,
    target: str | os.PathLike,
    model: LoadedModel,
    settings: DenoiseSettings | None = None,
    progress: Progress | None = None,
    *,
    dicom: bool = False,
    series_uid: str | None = None,
    fit_format: bool = False,
) -> DenoisedFile:
    """Denoise one image file or DICOM series folder into ``target``, written atomically; the input is never changed.

    Args:
        source: an image file or DICOM series folder (``series_uid`` picks a series of a folder that holds several).
        target: the output image file; with ``dicom`` a derived DICOM series instead: a new folder, or one ``.dcm``
            file for one single- or multi-frame source file (:func:`scripts.dicom_writer.write_derived_series`).
        model: from :func:`scripts.engine.load_bundle`.
        settings: how to denoise (:class:`DenoiseSettings`; default: its defaults).
        progress: how the caller shows the work (:class:`Progress`).
        fit_format: ``target`` is a default name: where its format cannot hold the result (a volume as PNG, 16 bits
            as PNG...), write ``.tif`` (a 2D image) or ``.nii.gz`` (a volume) instead.

    Returns:
        The :class:`DenoisedFile`: the noise level, the model that denoised (adapted or not), the target written.

    Raises:
        ImageReadError, InvalidImageError, ImageWriteError, CancelledError (a cancelled run writes nothing), and the
        errors of a model that does not fit the image (:class:`scripts.errors.BundleError`).
    """
    source, settings, progress = Path(source), settings or DenoiseSettings(), progress or Progress()
    volume = read_image(source, series_uid, max_bytes=settings.max_bytes)
    run, axis = DenoisedFile(source, Path(target), model, volume), settings.axis
    try:
        with checked_once(volume.array, axis) as array:  # the noise readout, adaptation and engine check it again
            check_size(array.shape, axis)
            run.slices = array.shape[axis] if array.ndim == 3 else 1
            if not dicom:  # before, not after, the work
                out_dtype = np.float32 if settings.float_output else array.dtype
                run.target = fitting_target(run.target, array.shape, out_dtype) if fit_format else run.target
                check_writable(run.target, array.shape, out_dtype, overwrite=settings.overwrite)
            progress.read(run)
            window = settings.window or IntensityWindow.from_data(array)
            run.level = estimate_noise_level(array, window, axis)
            if settings.adapt_seconds > 0:
                # Adapting trains: gradients on, even where the caller runs in no-grad mode (a MONAI evaluator).
                with progress.stage("adapt", round(settings.adapt_seconds * 1000), run) as step, torch.enable_grad():
                    run.model = adapt_model(
                        model, array, window, seconds=settings.adapt_seconds, progress=step, axis=axis
                    )
            with progress.stage("denoise", run.slices, run) as step:
                run.denoised = denoise_volume(
                    array,
                    run.model,
                    window=window,
                    axis=axis,
                    batch_size=settings.batch_size,
                    tile=settings.tile,
                    strength=settings.strength,
                    float_output=settings.float_output,
                    progress=step,
                    views=settings.views,
                )
    except InvalidImageError as error:  # the engine sees arrays only; name the file
        raise InvalidImageError(f"{source}: {error}") from None
    if dicom:
        derivation = Derivation.from_metadata(run.model.metadata, settings.details)
        sources = dicom_files(source, series_uid)
        write_derived_series(
            run.target, run.denoised, sources, derivation, overwrite=settings.overwrite, original=volume.array
        )
    else:
        write_image(run.target, run.denoised, like=volume, overwrite=settings.overwrite)
    return run


def check_size(shape: tuple[int, ...], axis: int) -> None:
    """Refuse an image whose slices (along ``axis`` for volumes) are too small to denoise: the noise it would
    remove cannot be measured on fewer than :data:`MIN_SIDE` pixels a side, and a 1 x 1 image has none to remove."""
    plane = [n for index, n in enumerate(shape) if index != axis or len(shape) == 2]
    if min(plane) < MIN_SIDE:
        other_axis = f" along --axis {axis}; slice along another --axis" if len(shape) == 3 else ""
        raise InvalidImageError(
            f"the image is too small to denoise: slices of {' x '.join(map(str, plane))} pixels{other_axis} "
            f"(each side needs at least {MIN_SIDE} pixels)"
        )


def fitting_target(target: Path, shape: tuple[int, ...], dtype) -> Path:
    """``target``, or where its format cannot hold the result (a TIFF stack, a 16-bit or float picture) the name with
    a format that can: ``.tif`` for 2D images PNG cannot hold, ``.nii.gz`` for volumes."""
    if not format_problem(extension(target), shape, np.dtype(dtype)):
        return target
    ext = ".tif" if not format_problem(".tif", shape, np.dtype(dtype)) else ".nii.gz"
    return target.with_name(stem(target) + ext)
