"""Derived DICOM: denoised pixels written back as a new series in the source's study, one file per source instance.

What a PACS and a viewer expect of an image-processing result (DICOM PS3.3):

- every attribute of the source instance kept (patient, study, frame of reference, acquisition, per-instance geometry),
  private ones left out (they describe the original pixels, which the processing changed);
- a new SeriesInstanceUID and SOPInstanceUIDs; SeriesNumber + 1000 and SeriesDescription ``"<original> MedDenoise"``;
- Image Type ``DERIVED\\SECONDARY`` (``DERIVED\\PRIMARY`` for enhanced multi-frame images, whose Image Type allows
  only PRIMARY), Derivation Description and Derivation Code Sequence, Source Image Sequence naming the source instance,
  and a Contributing Equipment item (Processing Equipment) with the model's name and version;
- pixels in the source's stored representation (Bits Allocated/Stored, signedness, Rescale Slope/Intercept: HU stay
  HU), clipped to the stored range, in uncompressed Explicit VR Little Endian whatever the source's transfer syntax.

Writes are atomic: a hidden folder (or file) beside the target is renamed into place only when every instance is
written; an error or Ctrl-C removes it. The source files are only read.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.misc import is_dicom
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGExtended12Bit, generate_uid

from .atomic import atomic_file, atomic_folder
from .errors import ImageReadError, ImageWriteError
from .image_io import extension, series_files
from .slices import slice_stack

#: CID 7203 Image Derivation (extensible) has no denoising concept; smoothing is the nearest one it defines.
DERIVATION_CODE = ("113087", "DCM", "Smoothing")
#: CID 7202 Source Image Purposes of Reference.
SOURCE_PURPOSE_CODE = ("121322", "DCM", "Source image for image processing operation")
#: CID 7005 Contributing Equipment Purposes of Reference.
PROCESSING_EQUIPMENT_CODE = ("109102", "DCM", "Processing Equipment")
SERIES_SUFFIX = " MedDenoise"
SERIES_NUMBER_OFFSET = 1000
#: Attributes that describe the source's pixel values or encoding, not valid for the new pixels.
_STALE = (
    "IconImageSequence",
    "SmallestImagePixelValue",
    "LargestImagePixelValue",
    "SmallestPixelValueInSeries",
    "LargestPixelValueInSeries",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "DataSetTrailingPadding",
)
#: Enhanced MR attributes that describe an acquisition and that DERIVED images leave out: dciodvfy refuses them when
#: Image Type Value 1 is not ORIGINAL or MIXED (MR Pulse Sequence and Bulk Motion Synchronization modules).
_ORIGINAL_ONLY = (
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultiPlanarExcitation", "PhaseContrast",
    "TimeOfFlightContrast", "SteadyStatePulseSequence", "EchoPlanarPulseSequence", "SaturationRecovery",
    "SpectrallySelectedSuppression", "OversamplingPhase", "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace", "NumberOfKSpaceTrajectories",
    "BulkMotionCompensationTechnique",
)  # fmt: skip
#: Transfer syntaxes that are always lossy: their pixels keep a lossy history (PS3.3 C.7.6.1.1.5) once decompressed.
_LOSSY = {JPEGBaseline8Bit: "ISO_10918_1", JPEGExtended12Bit: "ISO_10918_1"}
#: Numpy types of the byte-order-dependent "other" VRs, which pydicom copies as raw bytes.
_OTHER_VRS = {"OW": "u2", "OL": "u4", "OF": "f4", "OD": "f8", "OV": "u8"}


@dataclasses.dataclass(frozen=True)
class Derivation:
    """What made the derived series: the model (bundle ``name``/``version``) and how it was run (``details``)."""

    name: str = "MedDenoise"
    version: str = ""
    details: str = ""

    @classmethod
    def from_metadata(cls, metadata: dict, details: str = "") -> Derivation:
        """From a bundle's ``metadata.json`` dict (``name``, ``version``)."""
        return cls(str(metadata.get("name", "MedDenoise")), str(metadata.get("version", "")), details)

    @property
    def description(self) -> str:
        """Derivation Description (ST, at most 1024 characters)."""
        text = f"Denoised with {self.name} {self.version}".rstrip()
        return (f"{text}; {self.details}" if self.details else text)[:1024]


def dicom_files(path: str | os.PathLike, series_uid: str | None = None) -> list[Path]:
    """The DICOM files behind :func:`scripts.image_io.read_image` of ``path``, in the order of the volume's slice axis.

    A series folder's files come in the order ``read_image`` stacks them in (:func:`scripts.image_io.series_files`); a
    single file is one item (its frames are the slices, in file order). Raises :class:`ImageReadError` for a folder
    without one clear series (the same errors as ``read_image``) or a file that is not DICOM.
    """
    path = Path(path)
    if path.is_dir():
        return [Path(name) for name in series_files(path, series_uid)]
    if not (path.is_file() and is_dicom(path)):
        raise ImageReadError(f"{path}: not a DICOM file; DICOM output needs a DICOM input")
    return [path]


def is_dicom_input(path: str | os.PathLike) -> bool:
    """A DICOM series folder or a DICOM file (by content: the ``DICM`` preamble)."""
    path = Path(path)
    return path.is_dir() or (path.is_file() and is_dicom(path))


def check_target(target: str | os.PathLike, sources: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse, before any work, a target that cannot receive the derived series of ``sources``.

    A ``.dcm`` target holds one source file; a folder target must be new or empty, or (with ``overwrite``) hold only
    DICOM files, such as an earlier result.
    """
    target = Path(target)
    if extension(target) == ".dcm":
        if len(sources) > 1:
            raise ImageWriteError(f"{target}: a series of {len(sources)} files needs an output folder, not a .dcm file")
        if target.exists() and not overwrite:
            raise ImageWriteError(f"{target}: the file exists; use --overwrite or choose another output")
        return
    if target.exists() and not target.is_dir():
        raise ImageWriteError(f"{target}: a file, not a folder; choose a folder for the DICOM series")
    contents = list(target.iterdir()) if target.is_dir() else []
    if contents and not overwrite:
        raise ImageWriteError(f"{target}: the folder is not empty; use --overwrite or choose a new folder")
    others = [path.name for path in contents if not (path.is_file() and is_dicom(path))]
    if others:
        raise ImageWriteError(
            f"{target}: the folder holds files that are not DICOM ({', '.join(sorted(others)[:3])}); "
            "choose a new folder for the DICOM series"
        )


def check_derivable(source: Dataset, path: Path) -> None:
    """Refuse a source whose pixels cannot be written back in their stored representation (colour, float, 1-bit)."""
    if "BitsStored" not in source:  # float pixel data (parametric maps) has no Bits Stored
        raise ImageWriteError(f"{path}: no integer pixel data to write back; write .nii.gz instead")
    photometric = str(source.get("PhotometricInterpretation", ""))
    if int(source.get("SamplesPerPixel", 1)) != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageWriteError(f"{path}: {photometric or 'colour'} pixels cannot be written back; write .nii.gz instead")
    if int(source.BitsAllocated) not in (8, 16, 32):
        raise ImageWriteError(f"{path}: {source.BitsAllocated}-bit pixels cannot be written back; write .nii.gz")


def frame_rescale(source: Dataset, frame: int) -> tuple[float, float]:
    """(slope, intercept) of ``frame`` (0-based): the per-frame or shared Pixel Value Transformation of an enhanced
    image, else the top-level Rescale Slope/Intercept, else (1, 0)."""
    per_frame = source.get("PerFrameFunctionalGroupsSequence") or []
    shared = source.get("SharedFunctionalGroupsSequence") or []
    for group in [*per_frame[frame : frame + 1], *shared[:1]]:
        transform = group.get("PixelValueTransformationSequence")
        if transform:
            return float(transform[0].get("RescaleSlope", 1)), float(transform[0].get("RescaleIntercept", 0))
    return float(source.get("RescaleSlope", 1) or 1), float(source.get("RescaleIntercept", 0) or 0)


def stored_pixels(values: np.ndarray, source: Dataset) -> np.ndarray:
    """``values`` (frames x rows x columns, in modality units such as HU) in ``source``'s stored representation:
    inverse rescale per frame, rounded, clipped to the Bits Stored range, in Bits Allocated little-endian integers."""
    bits, signed = int(source.BitsStored), int(source.get("PixelRepresentation", 0)) == 1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    stored = np.empty(values.shape, np.dtype(f"<{'i' if signed else 'u'}{int(source.BitsAllocated) // 8}"))
    for frame, plane in enumerate(values):
        slope, intercept = frame_rescale(source, frame)
        stored[frame] = np.clip(np.rint((plane.astype(np.float64) - intercept) / slope), low, high)
    return stored


def _code_item(code: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


@dataclasses.dataclass(frozen=True)
class DerivedSeries:
    """The identity every instance of one derived series shares: new UID, number, description, creation time."""

    uid: str
    number: int
    description: str
    created: datetime.datetime

    @classmethod
    def of(cls, source: Dataset) -> DerivedSeries:
        original = str(source.get("SeriesDescription", "") or "").strip()
        description = (original[: 64 - len(SERIES_SUFFIX)] + SERIES_SUFFIX).strip()  # LO holds 64 characters
        number = int(source.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET
        return cls(generate_uid(), number, description, datetime.datetime.now())


def derived_instance(
    source: Dataset,
    values: np.ndarray,
    series: DerivedSeries,
    derivation: Derivation,
    original: np.ndarray | None = None,
) -> Dataset:
    """A copy of ``source`` holding ``values`` (frames x rows x columns, modality units) as a derived instance of
    ``series``; ``source`` is left unchanged. Pixels that are padding in ``original`` (the source's frames in modality
    units; Pixel Padding Value, e.g. outside a CT's field of view) stay padding."""
    ds = copy.deepcopy(source)
    ds.remove_private_tags()
    enhanced = "Enhanced" in source.SOPClassUID.name  # enhanced multi-frame IODs: Image Type Value 2 is PRIMARY
    for keyword in _STALE + (_ORIGINAL_ONLY if enhanced else ()):
        ds.pop(keyword, None)
    if source.original_encoding[1] is False:
        _to_little_endian(ds)
    ds.ImageType = ["DERIVED", "PRIMARY" if enhanced else "SECONDARY", *list(source.get("ImageType", []))[2:]]
    derived = Dataset()  # the General Image attributes, or an enhanced image's Derivation Image functional group
    derived.DerivationDescription = derivation.description
    derived.DerivationCodeSequence = [_code_item(DERIVATION_CODE)]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [_code_item(SOURCE_PURPOSE_CODE)]
    derived.SourceImageSequence = [reference]
    if enhanced and ds.get("SharedFunctionalGroupsSequence"):
        _derive_frames(ds, derived)
        ds.SourceImageEvidenceSequence = [_evidence(source)]
    else:
        ds.update(derived)
    ds.ContributingEquipmentSequence = [
        *source.get("ContributingEquipmentSequence", []),
        _equipment(series, derivation),
    ]
    date, time = series.created.strftime("%Y%m%d"), series.created.strftime("%H%M%S.%f")
    ds.InstanceCreationDate = ds.ContentDate = ds.SeriesDate = date
    ds.InstanceCreationTime = ds.ContentTime = ds.SeriesTime = time
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if source.file_meta.TransferSyntaxUID in _LOSSY:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = (
            ds.get("LossyImageCompressionMethod") or _LOSSY[source.file_meta.TransferSyntaxUID]
        )
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = stored_pixels(values, source)
    if original is not None and "PixelPaddingValue" in source:
        before = stored_pixels(original, source)
        padding = sorted(
            (int(source.PixelPaddingValue), int(source.get("PixelPaddingRangeLimit", source.PixelPaddingValue)))
        )
        padded = (before >= padding[0]) & (before <= padding[1])
        pixels[padded] = before[padded]
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OB" if pixels.itemsize == 1 else "OW"
    return ds


def _derive_frames(ds: Dataset, derived: Dataset) -> None:
    """An enhanced image's derivation: every frame's Frame Type Value 1 DERIVED, and ``derived`` as the shared
    Derivation Image functional group."""
    for group in [*ds.SharedFunctionalGroupsSequence, *ds.get("PerFrameFunctionalGroupsSequence", [])]:
        for element in group:
            if element.keyword.endswith("FrameTypeSequence") and element.value and "FrameType" in element.value[0]:
                element.value[0].FrameType = ["DERIVED", *list(element.value[0].FrameType)[1:]]
    ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence = [derived]


def _evidence(source: Dataset) -> Dataset:
    """The source instance as a Hierarchical SOP Instance Reference (study, series, instance)."""
    instance, series, study = Dataset(), Dataset(), Dataset()
    instance.ReferencedSOPClassUID, instance.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    series.SeriesInstanceUID, series.ReferencedSOPSequence = source.SeriesInstanceUID, [instance]
    study.StudyInstanceUID, study.ReferencedSeriesSequence = source.StudyInstanceUID, [series]
    return study


def _to_little_endian(ds: Dataset) -> None:
    """Byte-swap the "other" binary values of a dataset read from Explicit VR Big Endian (pydicom converts every other
    VR itself when it writes little endian)."""
    for element in ds.iterall():
        if element.VR in _OTHER_VRS and element.value is not None:
            kind = _OTHER_VRS[element.VR]
            element.value = np.frombuffer(element.value, f">{kind}").astype(f"<{kind}").tobytes()
    ds.set_original_encoding(False, True)


def _equipment(series: DerivedSeries, derivation: Derivation) -> Dataset:
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [_code_item(PROCESSING_EQUIPMENT_CODE)]
    item.Manufacturer = "MedDenoise"
    item.ManufacturerModelName = derivation.name[:64]
    item.SoftwareVersions = derivation.version or "unknown"
    item.ContributionDateTime = series.created.strftime("%Y%m%d%H%M%S.%f")
    item.ContributionDescription = derivation.description
    return item


def instance_name(source: Path) -> str:
    """The file name of ``source``'s derived instance: its name with ``.dcm`` (UID-like names keep every dot)."""
    return f"{source.stem if source.suffix.lower() == '.dcm' else source.name}.dcm"


def write_derived_series(
    target: str | os.PathLike,
    array: np.ndarray,
    sources: Sequence[str | os.PathLike],
    derivation: Derivation,
    overwrite: bool = False,
    original: np.ndarray | None = None,
) -> list[Path]:
    """Write ``array`` (K x J x I in modality units, the slices of ``sources`` in :func:`dicom_files` order: each
    file's frames in turn) as a derived series: a folder of :func:`instance_name` files, or one ``.dcm`` file for one
    source. ``original`` (the input volume, same shape) keeps padding pixels padding. Returns the written files.

    Raises:
        ImageWriteError: the target cannot be used (see :func:`check_target`), a source cannot be written back (see
            :func:`check_derivable`), ``array`` does not hold the sources' frames, or the disk refuses.
    """
    target, sources = Path(target), [Path(path) for path in sources]
    check_target(target, sources, overwrite)
    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in sources]
    for header, path in zip(headers, sources, strict=True):
        check_derivable(header, path)
    frames = [int(header.get("NumberOfFrames", 1) or 1) for header in headers]
    shapes = {(int(header.Rows), int(header.Columns)) for header in headers}
    array = slice_stack(array)
    original = None if original is None else slice_stack(original)
    if array.shape[0] != sum(frames) or shapes != {array.shape[1:]}:
        raise ImageWriteError(
            f"{target}: {array.shape[0]} slices of {array.shape[1:]} do not match the {sum(frames)} frames of "
            f"{sorted(shapes)} in the {len(sources)} source file(s)"
        )
    series = DerivedSeries.of(headers[0])
    single = extension(target) == ".dcm"
    names = [instance_name(path) for path in sources]
    if len(set(names)) < len(names):  # e.g. "a" and "a.dcm" in one folder
        names = [f"IM{index:05d}.dcm" for index in range(1, len(sources) + 1)]
    if not target.parent.is_dir():
        raise ImageWriteError(f"{target}: the folder {target.parent} does not exist")
    try:
        with atomic_file(target) if single else atomic_folder(target) as staging:
            start = 0
            for header, name, count in zip(headers, names, frames, strict=True):
                frames_of = slice(start, start + count)
                before = None if original is None else original[frames_of]
                instance = derived_instance(header, array[frames_of], series, derivation, before)
                pydicom.dcmwrite(staging if single else staging / name, instance, enforce_file_format=True)
                start += count
    except OSError as error:
        raise ImageWriteError(
            f"{target}: cannot be written ({error.strerror or error}); free space or choose another folder"
        ) from None
    return [target] if single else [target / name for name in names]
