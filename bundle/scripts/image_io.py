"""Reading and writing medical images with their geometry (SimpleITK underneath).

Reads NIfTI, NRRD/NHDR, MHA/MHD, single- and multi-frame DICOM files, DICOM series folders, PNG/JPEG/TIFF/PGM/BMP.
Arrays are K x J x I (slice, row, column) for volumes and J x I for 2D images, as SimpleITK and Slicer give them.
Writes are atomic: a temporary file in the output folder is renamed over the target only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (SimpleITK's documented alias)

from .errors import ImageReadError, ImageWriteError, InvalidImageError

_NETPBM = (".pgm", ".ppm", ".pnm")
#: Picture formats by their first bytes: a JPEG saved as ``.png`` (common in image collections put together from
#: papers and web pages) is read by its content, which ITK does only for some formats.
_PICTURE_SIGNATURES = {
    b"\x89PNG": "PNGImageIO",
    b"\xff\xd8\xff": "JPEGImageIO",
    b"II*\x00": "TIFFImageIO",
    b"MM\x00*": "TIFFImageIO",
    b"BM": "BMPImageIO",
}
_PICTURES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
READ_EXTENSIONS = (
    ".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima",
    *_PICTURES, *_NETPBM,
)  # fmt: skip
#: Single-file formats that keep geometry (NIfTI, NRRD, MHA) and 2D picture formats for 2D images.
WRITE_EXTENSIONS = (".nii", ".nii.gz", ".nrrd", ".mha", ".png", ".tif", ".tiff")


def extension(path: str | os.PathLike) -> str:
    """Lower-case extension including a double one such as ``.nii.gz``."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def stem(path: str | os.PathLike) -> str:
    """File or folder name without its (double) extension."""
    name = Path(path).name
    ext = extension(path)
    return name[: -len(ext)] if ext and name.lower().endswith(ext) else name


@dataclasses.dataclass
class Volume:
    """Voxels plus the geometry needed to write them back in place.

    ``spacing``, ``origin`` and ``direction`` are in SimpleITK's (x, y, z) order; ``modality`` is the DICOM Modality
    (``CT``, ``MR``, ``CR``, ...) or ``""`` when the file does not say.
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    modality: str = ""
    source: str = ""

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image of ``array`` (default: this volume's voxels) with this volume's geometry."""
        image = sitk.GetImageFromArray(self.array if array is None else array)
        if image.GetDimension() == len(self.spacing):
            image.SetSpacing(self.spacing)
            image.SetOrigin(self.origin)
            image.SetDirection(self.direction)
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, modality: str = "", source: str = "") -> Volume:
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=image.GetSpacing(),
            origin=image.GetOrigin(),
            direction=image.GetDirection(),
            modality=modality,
            source=source,
        )


def dicom_series(folder: str | os.PathLike) -> dict[str, list[str]]:
    """The DICOM series in ``folder`` (not recursive), as ``{SeriesInstanceUID: sorted file names}``.

    Files that are not DICOM are skipped.
    """
    reader = sitk.ImageSeriesReader
    with _sitk_quiet():
        return {
            uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid)) for uid in reader.GetGDCMSeriesIDs(str(folder))
        }


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a medical image file or DICOM series folder.

    Raises:
        ImageReadError: the path does not exist, is not readable, or holds no image SimpleITK can read; a folder that
            holds several DICOM series without ``series_uid``.
        InvalidImageError: the image is 4D, complex, empty or has colour content (grey RGB is converted to grey).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied; make the file readable or copy it somewhere readable")
    if path.is_dir():
        image, modality = _read_series(path, series_uid)
    else:
        image, modality = _read_file(path)
    return _to_volume(image, modality, str(path))


def series_files(folder: str | os.PathLike, series_uid: str | None = None) -> list[str]:
    """The files of the folder's one DICOM series (or of ``series_uid``) in the order they are stacked along the slice
    axis (GDCM's sort along the slice normal); raises :class:`ImageReadError` for no series or several."""
    series = dicom_series(folder)
    if not series:
        raise ImageReadError(f"{folder}: the folder holds no DICOM series; give a DICOM folder or an image file")
    if series_uid is None:
        if len(series) > 1:
            listing = ", ".join(f"{uid} ({len(files)} files)" for uid, files in series.items())
            raise ImageReadError(
                f"{folder}: the folder holds {len(series)} DICOM series ({listing}); "
                "put each series in its own folder or choose one by its SeriesInstanceUID"
            )
        series_uid = next(iter(series))
    if series_uid not in series:
        raise ImageReadError(f"{folder}: no DICOM series with SeriesInstanceUID {series_uid}")
    return series[series_uid]


def _read_series(folder: Path, series_uid: str | None) -> tuple[sitk.Image, str]:
    files = series_files(folder, series_uid)
    if len(files) == 1:  # one (multi-frame) file: ITK's series reader would stack its frames as 4D
        return _read_file(Path(files[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _sitk_quiet():
            image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"{folder}: the DICOM series cannot be read ({_first_line(error)})") from None
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else ""
    return image, modality


def _read_file(path: Path) -> tuple[sitk.Image, str]:
    if path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    if extension(path) in _NETPBM:
        return _read_netpbm(path), ""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    if extension(path) in _PICTURES:
        with open(path, "rb") as handle:
            head = handle.read(4)
        image_io = next((io for magic, io in _PICTURE_SIGNATURES.items() if head.startswith(magic)), None)
        if image_io:
            reader.SetImageIO(image_io)
    try:
        with _sitk_quiet():
            reader.ReadImageInformation()
            image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(
            f"{path}: not a readable medical image ({_first_line(error)}); supported: {', '.join(READ_EXTENSIONS)} "
            "files and DICOM series folders"
        ) from None
    if reader.GetImageIOFromFileName(str(path)) == "NiftiImageIO":
        _check_nifti_complete(path)
    modality = reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else ""
    return image, modality


def _check_nifti_complete(path: Path) -> None:
    """Refuse a truncated NIfTI file: ITK fills the missing voxels with zeros instead of failing."""
    import gzip
    import io
    import zlib

    from nibabel import Nifti1Header, Nifti2Header
    from nibabel.spatialimages import HeaderDataError

    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"  # by content, as ITK chose its reader
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            head = stream.read(Nifti2Header.sizeof_hdr)
            size = len(head) + sum(len(block) for block in iter(lambda: stream.read(1 << 24), b"")) if compressed else 0
        nifti2 = Nifti2Header.sizeof_hdr in (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
        header = (Nifti2Header if nifti2 else Nifti1Header).from_fileobj(io.BytesIO(head))
        offset = max(int(header.get_data_offset()), header.single_vox_offset)  # 0 means "right after the header"
        expected = offset + int(np.prod(header.get_data_shape(), dtype=np.int64)) * header.get_data_dtype().itemsize
    except (EOFError, OSError, ValueError, zlib.error, HeaderDataError) as error:
        raise ImageReadError(f"{path}: the NIfTI file is damaged ({error}); get the file again") from None
    size = size or path.stat().st_size
    if size < expected:
        raise ImageReadError(
            f"{path}: the NIfTI file is truncated ({size} of {expected} bytes); the copy or download is incomplete, "
            "get the file again"
        )


def _read_netpbm(path: Path) -> sitk.Image:
    """PGM/PPM/PNM through imageio (ITK has no Netpbm reader)."""
    import imageio.v3 as iio

    try:
        array = iio.imread(path)
    except Exception as error:  # imageio raises many types for a damaged file
        raise ImageReadError(f"{path}: not a readable Netpbm image ({error})") from None
    return sitk.GetImageFromArray(array, isVector=array.ndim == 3)


def _to_volume(image: sitk.Image, modality: str, source: str) -> Volume:
    if image.GetDimension() > 3:
        raise InvalidImageError(f"{source}: a {image.GetDimension()}D image; give one 2D image or 3D volume")
    if "complex" in image.GetPixelIDTypeAsString():
        raise InvalidImageError(f"{source}: complex-valued voxels; give a magnitude image")
    if 0 in image.GetSize():
        raise InvalidImageError(f"{source}: the image is empty (size {image.GetSize()})")
    volume = Volume.from_sitk(image, modality, source)
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        colour = volume.array[..., :3] if components >= 3 else volume.array
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1])):
            raise InvalidImageError(
                f"{source}: colour content ({components} channels that differ); MedDenoise denoises grey images — "
                "convert it to greyscale first"
            )
        volume.array = np.ascontiguousarray(colour[..., 0])
    return volume


def write_image(path: str | os.PathLike, array: np.ndarray, like: Volume, overwrite: bool = True) -> Path:
    """Write ``array`` with ``like``'s geometry to ``path`` atomically; the format follows the extension.

    A single-slice volume written to a 2D format (PNG, TIFF) is written as a 2D image.
    """
    path = Path(path)
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise ImageWriteError(
            f"{path}: cannot write '{ext or 'no extension'}'; use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    if path.exists() and not overwrite:
        raise ImageWriteError(f"{path}: the file exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise ImageWriteError(f"{path}: the folder {path.parent} is not writable")
    if ext in (".png", ".tif", ".tiff"):
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.ndim != 2:
            raise ImageWriteError(
                f"{path}: {ext} holds 2D images; write a {array.ndim}D volume as .nii.gz, .nrrd or .mha"
            )
        if ext == ".png" and array.dtype not in (np.uint8, np.uint16):
            raise ImageWriteError(
                f"{path}: PNG holds 8- or 16-bit unsigned pixels, not {array.dtype}; write .tif, .nrrd or .nii.gz instead"
            )
    image = like.to_sitk(array)
    fd, partial = tempfile.mkstemp(prefix=f".{stem(path)}.", suffix=f".partial{ext}", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(partial, 0o666 & ~_umask())  # mkstemp makes it private; the result gets a normal file's mode
        with _sitk_quiet():
            sitk.WriteImage(image, partial, useCompression=ext in (".nii.gz", ".nrrd", ".mha"))
        os.replace(partial, path)
    except (RuntimeError, OSError) as error:  # OSError: e.g. the target is a folder
        raise ImageWriteError(f"{path}: cannot be written ({_first_line(error)})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK messages start with a file:line location; the description is the last line.
    return lines[-1] if lines else type(error).__name__


@contextlib.contextmanager
def _sitk_quiet():
    """Silence ITK's warnings on stderr (we raise our own, clearer errors)."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)
