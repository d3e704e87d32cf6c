"""Reading and writing medical images with their geometry (SimpleITK underneath).

Reads NIfTI, NRRD/NHDR, MHA/MHD, single- and multi-frame DICOM files, DICOM series folders, PNG/JPEG/TIFF/PGM/BMP.
Arrays are K x J x I (slice, row, column) for volumes and J x I for 2D images, as SimpleITK and Slicer give them.
Writes are atomic: a temporary file in the output folder is renamed over the target only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (SimpleITK's documented alias)

from .atomic import atomic_file
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
_PICTURE_WRITES = (".png", ".tif", ".tiff")
#: Largest decoded image read without the caller raising the limit (``read_image(max_bytes=...)``,
#: ``denoise.py --max-image-mb``): 2 GiB holds a 1024^3 int16 CT, and denoising needs about 3x the image in memory.
MAX_IMAGE_BYTES = 2 << 30
#: A file that decodes to more than this many times its size on disk (and more than :data:`_BOMB_FLOOR` bytes) is a
#: decompression bomb unless the caller gives its own limit: real CT/MR/X-ray compresses 2-10x, not 100x.
MAX_EXPANSION = 100
_BOMB_FLOOR = 64 << 20


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


def read_image(path: str | os.PathLike, series_uid: str | None = None, max_bytes: int | None = None) -> Volume:
    """Read a medical image file or DICOM series folder.

    ``max_bytes`` bounds the decoded image, checked from the header before any voxel is allocated; ``None`` means
    :data:`MAX_IMAGE_BYTES` and also refuses decompression bombs (:data:`MAX_EXPANSION`); a caller who gives a limit
    accepts any image up to it.

    Raises:
        ImageReadError: the path does not exist, is not a regular file or folder, is not readable, or holds no image
            that can be read exactly (truncated, geometry that would change, a detached header pointing outside its
            folder); a folder that holds several DICOM series without ``series_uid``; an image over the size limit.
        InvalidImageError: the image is 4D, complex, empty or has colour content (grey RGB is converted to grey).
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or folder")
    if not (path.is_dir() or stat.S_ISREG(path.stat().st_mode)):
        raise ImageReadError(f"{path}: not a regular file or folder (a device, pipe or socket); give an image file")
    if not os.access(path, os.R_OK):
        raise ImageReadError(f"{path}: permission denied; make the file readable or copy it somewhere readable")
    if path.is_dir():
        image, modality = _read_series(path, series_uid, max_bytes)
    elif path.stat().st_size == 0:
        raise ImageReadError(f"{path}: the file is empty")
    elif nifti := _nifti_kind(path):
        return _checked(_read_nifti(path, nifti, max_bytes))
    else:
        image, modality = _read_file(path, max_bytes)
    return _checked(_to_volume(image, modality, str(path)))


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


def _read_series(folder: Path, series_uid: str | None, max_bytes: int | None) -> tuple[sitk.Image, str]:
    files = series_files(folder, series_uid)
    if len(files) == 1:  # one (multi-frame) file: ITK's series reader would stack its frames as 4D
        return _read_file(Path(files[0]), max_bytes)
    first = _header(Path(files[0]))
    shape = (len(files), *first.GetSize()[1::-1])
    _check_size(folder, shape, _voxel_bytes(first), sum(os.path.getsize(f) for f in files), max_bytes)
    for name in files:
        _check_dicom_pixels(Path(name))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _sitk_quiet():
            image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"{folder}: the DICOM series cannot be read ({_last_line(error)})") from None

    def tag(k: int, key: str) -> str:
        return reader.GetMetaData(k, key) if reader.HasMetaDataKey(k, key) else ""

    positions = [_dicom_vector(tag(k, "0020|0032"), 3) for k in range(len(files))]
    orientations = [_dicom_vector(tag(k, "0020|0037"), 6) for k in range(len(files))]
    _check_slice_geometry(folder, positions, orientations, image)
    modality = reader.GetMetaData(0, "0008|0060").strip() if reader.HasMetaDataKey(0, "0008|0060") else ""
    return image, modality


def _dicom_vector(text: str, size: int) -> np.ndarray:
    try:
        values = np.array([float(value) for value in text.split("\\")], dtype=np.float64)
    except ValueError:
        values = np.full(size, np.nan)
    return values if values.size == size else np.full(size, np.nan)


def _check_slice_geometry(source, positions: list, orientations: list, image: sitk.Image) -> None:
    """Refuse slices that one regular volume cannot hold: mixed or non-orthogonal orientations, duplicate positions,
    gaps or uneven spacing, slices shifted sideways (gantry tilt). ITK would stack them with an average spacing.

    ``positions``: each slice's ImagePositionPatient (mm), ``orientations``: its ImageOrientationPatient, in the
    order ITK stacked them; ``image`` gets the spacing the positions prove.
    """
    positions, orientations = np.array(positions), np.array(orientations)
    if not (np.isfinite(positions).all() and np.isfinite(orientations).all()):
        raise ImageReadError(
            f"{source}: a slice has no valid position or orientation (ImagePositionPatient/ImageOrientationPatient), "
            "so the slices cannot be stacked into a volume; denoise the files one by one"
        )
    if not np.allclose(orientations, orientations[0], atol=1e-4):
        raise ImageReadError(
            f"{source}: the slices have different orientations (e.g. axial and sagittal under one series); "
            "put each orientation in its own series folder"
        )
    row, column = orientations[0][:3], orientations[0][3:]
    _check_orthonormal(source, np.stack([row, column]))
    normal = np.cross(row, column)
    steps = np.diff(positions, axis=0)
    along = steps @ normal
    sideways = np.linalg.norm(steps - along[:, None] * normal, axis=1)
    spacing = float(np.median(along))
    if abs(spacing) < 1e-3:
        raise ImageReadError(
            f"{source}: {len(positions)} slices share one position; the series holds duplicates or repeated "
            "acquisitions, keep one of each"
        )
    tolerance = 0.01 * abs(spacing) + 1e-3
    if np.abs(along - spacing).max() > tolerance:
        raise ImageReadError(
            f"{source}: the slices are not evenly spaced (steps from {abs(along).min():.3g} to {abs(along).max():.3g} "
            "mm: a gap, a duplicate or overlapping acquisitions); a volume needs one spacing, split or resample the "
            "series first"
        )
    if sideways.max() > tolerance:
        raise ImageReadError(
            f"{source}: each slice is shifted sideways by up to {sideways.max():.3g} mm (a tilted gantry); resample "
            "the series to an orthogonal grid first"
        )
    if image.GetDimension() == 3:
        image.SetSpacing((*image.GetSpacing()[:2], abs(spacing)))


def _check_orthonormal(source, axes: np.ndarray) -> None:
    """``axes`` (N x 3): unit vectors at right angles, else the image's axes are skewed and ITK would replace them."""
    if not np.allclose(axes @ axes.T, np.eye(len(axes)), atol=1e-3):
        raise ImageReadError(
            f"{source}: the image axes are not at right angles or not unit length (a sheared or invalid "
            "orientation); MedDenoise keeps geometry exactly and cannot hold this one, resample the image first"
        )


def _check_dicom_pixels(path: Path) -> None:
    """Refuse a DICOM file whose uncompressed pixel data does not hold Rows x Columns x frames x samples x bits:
    GDCM reads past or short of it silently (a 128 x 128 image labelled 256 x 256, 16-bit data labelled 32-bit)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, defer_size=1024)
        element = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
        syntax = ds.file_meta.get("TransferSyntaxUID")
        if element is None or element.length == 0xFFFFFFFF or (syntax is not None and syntax.is_encapsulated):
            # compressed pixels, also under a native transfer syntax (undefined length: fragments that GDCM finds
            # and decodes, as in a real Hologic mammogram): the decoder checks their size
            return
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated) * int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
    except Exception:  # pydicom raises many types for damage ITK may still read; ITK's own checks then apply
        return
    expected, found = (bits + 7) // 8, int(element.length)
    if found not in (expected, expected + 1):  # one pad byte keeps the element's length even
        raise ImageReadError(
            f"{path}: the pixel data holds {found} bytes but the header (Rows {ds.Rows}, Columns {ds.Columns}, "
            f"{frames} frame(s), SamplesPerPixel {ds.get('SamplesPerPixel', 1)}, BitsAllocated {ds.BitsAllocated}) "
            f"needs {expected}; the file is damaged or its header is wrong, export it again"
        )


def _check_frame_geometry(path: Path, image: sitk.Image) -> None:
    """Enhanced multi-frame DICOM keeps each frame's position and orientation in its functional groups; GDCM uses
    the first frame's orientation and a single spacing. Refuse frames one volume cannot hold; give ``image`` the
    spacing the frames prove."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        frames = ds.get("PerFrameFunctionalGroupsSequence")
        if not frames or len(frames) < 2:
            return
        shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]

        def group(frame, name):
            item = frame.get(name) or (shared.get(name) if shared is not None else None)
            return item[0] if item else None

        positions = [group(f, "PlanePositionSequence").ImagePositionPatient for f in frames]
        orientations = [group(f, "PlaneOrientationSequence").ImageOrientationPatient for f in frames]
    except (AttributeError, TypeError, ValueError, pydicom.errors.InvalidDicomError):
        return  # no per-frame plane geometry: GDCM's reading stands
    _check_slice_geometry(
        path, [list(map(float, p)) for p in positions], [list(map(float, o)) for o in orientations], image
    )


def _read_file(path: Path, max_bytes: int | None) -> tuple[sitk.Image, str]:
    if extension(path) in _NETPBM:
        return _read_netpbm(path, max_bytes), ""
    _check_text_header(path)  # before ITK opens it
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    picture_io = None
    if extension(path) in _PICTURES:
        with open(path, "rb") as handle:
            head = handle.read(4)
        picture_io = next((io for magic, io in _PICTURE_SIGNATURES.items() if head.startswith(magic)), None)
        if picture_io:
            reader.SetImageIO(picture_io)
    if picture_io == "TIFFImageIO" and _tiff_dtype(path) in (np.float16, np.float64):
        return _read_tiff(path, max_bytes), ""
    try:
        with _sitk_quiet():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(
            f"{path}: not a readable medical image ({_last_line(error)}); supported: {', '.join(READ_EXTENSIONS)} "
            "files and DICOM series folders"
        ) from None
    _check_size(path, reader.GetSize()[::-1], _voxel_bytes(reader), _stored_bytes(path), max_bytes)
    dicom = reader.GetImageIOFromFileName(str(path)) == "GDCMImageIO"
    if dicom:
        _check_dicom_pixels(path)
    if picture_io in ("JPEGImageIO", "BMPImageIO"):
        _check_picture_complete(path)
    try:
        with _sitk_quiet():
            image = reader.Execute()
    except RuntimeError as error:
        raise ImageReadError(f"{path}: not a readable medical image ({_last_line(error)})") from None
    if dicom:
        if reader.HasMetaDataKey("0020|0037"):
            _check_orthonormal(path, _dicom_vector(reader.GetMetaData("0020|0037"), 6).reshape(2, 3))
        _check_frame_geometry(path, image)
    modality = reader.GetMetaData("0008|0060").strip() if reader.HasMetaDataKey("0008|0060") else ""
    return image, modality


def _header(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with _sitk_quiet():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageReadError(f"{path}: not a readable DICOM file ({_last_line(error)})") from None
    return reader


def _voxel_bytes(reader: sitk.ImageFileReader) -> int:
    probe = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    return sitk.GetArrayViewFromImage(probe).itemsize * reader.GetNumberOfComponents()


def _check_size(source, shape, voxel_bytes: int, stored_bytes: int, max_bytes: int | None) -> None:
    """Refuse, from the header and before allocating, an image over the size limit or a decompression bomb."""
    size = int(np.prod([int(n) for n in shape], dtype=np.float64)) * voxel_bytes
    limit = MAX_IMAGE_BYTES if max_bytes is None else max_bytes
    shape_text = " x ".join(map(str, shape))
    if size > limit:
        raise ImageReadError(
            f"{source}: the image ({shape_text}) decodes to {size / 2**20:.0f} MiB, over the limit of "
            f"{limit / 2**20:.0f} MiB; if the image is real and memory allows, raise the limit (--max-image-mb)"
        )
    if max_bytes is None and size > _BOMB_FLOOR and size > MAX_EXPANSION * stored_bytes:
        raise ImageReadError(
            f"{source}: the image ({shape_text}) decodes to {size / 2**20:.0f} MiB from {stored_bytes / 2**10:.0f} KiB "
            f"on disk ({size / max(stored_bytes, 1):.0f}x, limit {MAX_EXPANSION}x): a decompression bomb or an "
            f"almost empty image; if you trust the file, allow its size with --max-image-mb {size // 2**20 + 1}"
        )


def _stored_bytes(path: Path) -> int:
    """Bytes on disk of an image file, its detached data file included."""
    data = _check_text_header(path)
    return path.stat().st_size + (data.stat().st_size if data else 0)


#: Geometry fields of NRRD and MetaImage headers; ITK reads a NaN in them as 0 (a NaN origin becomes the origin).
_GEOMETRY_FIELDS = (
    "space origin", "space directions", "spacings", "thicknesses", "axis mins", "axis maxs",
    "offset", "origin", "position", "elementspacing", "elementsize", "transformmatrix", "orientation", "rotation",
)  # fmt: skip


def _text_header(path: Path) -> list[tuple[str, str]]:
    """The ``(field, value)`` pairs of a NRRD or MetaImage header (fields lower-case); ``[]`` for other formats."""
    with open(path, "rb") as handle:
        head = handle.read(1 << 16)
    if head.startswith(b"NRRD"):
        lines = [line for line in head.split(b"\n\n")[0].splitlines()[1:] if not line.startswith(b"#")]
        separator = b":"
    elif extension(path) in (".mha", ".mhd"):
        lines = head.splitlines()
        last = next((n for n, line in enumerate(lines) if line.strip().startswith(b"ElementDataFile")), len(lines))
        lines = lines[: last + 1]  # binary voxels follow ElementDataFile in a .mha
        separator = b"="
    else:
        return []
    pairs = [line.split(separator, 1) for line in lines if separator in line]
    return [(key.strip().lower().decode("latin-1"), value.strip().decode("latin-1")) for key, value in pairs]


def _check_text_header(path: Path) -> Path | None:
    """Check a NRRD or MetaImage header before ITK reads it: no NaN/Inf geometry, and its data file (returned, or
    ``None`` when the data follows the header) is its own; see :func:`_detached_data`."""
    fields = _text_header(path)
    for key, value in fields:
        if key in _GEOMETRY_FIELDS and re.search(r"\b(nan|inf|infinity)\b", value, re.IGNORECASE):
            raise ImageReadError(f"{path}: the header's {key} holds NaN/Inf ({value}); fix the header first")
    return _detached_data(path, fields)


def _detached_data(path: Path, fields: list[tuple[str, str]]) -> Path | None:
    """The data file a NRRD (``data file:``) or MetaImage (``ElementDataFile``) header names, ``None`` when the data
    follows the header. Refuses, before anything is read, a data file outside the header's folder (``..``, an
    absolute path, a link out of it), one that is not a regular file (``/dev/zero``, a pipe) or a list of files."""
    names = [value for key, value in fields if key in ("data file", "datafile", "elementdatafile")]
    names = [name for name in names if name.upper() != "LOCAL"]
    if not names:
        return None
    name = names[0]
    if len(names) > 1 or name.upper().startswith("LIST") or "%" in name or " " in name:
        raise ImageReadError(
            f"{path}: the header names several data files ({name}); MedDenoise reads one data file next to its "
            "header, convert the image to .nrrd, .mha or .nii.gz first"
        )
    folder = path.resolve().parent
    data = (folder / name).resolve()
    if folder not in data.parents or not data.is_file() or data.stat().st_size == 0:
        raise ImageReadError(
            f"{path}: the header's data file {name!r} is not a regular file in the header's folder; refusing to "
            "read it (a detached header may only point to its own data next to it)"
        )
    return data


def _check_picture_complete(path: Path) -> None:
    """Refuse a truncated JPEG or BMP: ITK decodes what is there and fills the rest (Pillow checks)."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            picture.load()
    except (OSError, SyntaxError, ValueError) as error:  # Pillow: "image file is truncated", broken data stream
        raise ImageReadError(f"{path}: the picture is damaged or truncated ({error}); get the file again") from None


def _tiff_dtype(path: Path) -> np.dtype | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            return tiff.pages[0].dtype
    except Exception:  # tifffile raises many types for damage; ITK then reports it
        return None


def _read_tiff(path: Path, max_bytes: int | None) -> sitk.Image:
    """TIFF with 16- or 64-bit float samples through tifffile: ITK reads float16 as uint16 bit patterns and refuses
    float64."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            _check_size(path, series.shape, series.dtype.itemsize, path.stat().st_size, max_bytes)
            array = series.asarray()
    except ImageReadError:
        raise
    except Exception as error:  # tifffile raises many types for a damaged file
        raise ImageReadError(f"{path}: not a readable TIFF image ({error})") from None
    if array.dtype == np.float16:
        array = array.astype(np.float32)  # exact; SimpleITK has no float16 images
    return sitk.GetImageFromArray(array)


def _nifti_kind(path: Path):
    """``(compressed, nibabel image class)`` for a single-file NIfTI-1 or NIfTI-2 (by content, whatever its
    extension), else ``None``."""
    import gzip

    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
        with (gzip.open if compressed else open)(path, "rb") as stream:
            head = stream.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    nifti1 = head[344:348] == b"n+1\0"
    if not (nifti1 or head[4:8] == b"n+2\0"):
        return None
    import nibabel as nib  # only for NIfTI: the Slicer module's worker reads NRRD where nibabel is not installed

    return compressed, nib.Nifti1Image if nifti1 else nib.Nifti2Image


def _read_nifti(path: Path, kind, max_bytes: int | None) -> Volume:
    """NIfTI-1 and NIfTI-2 through nibabel, which reads the raw voxels (ITK reads NaN as 0), extensions, and every
    header field.

    The geometry is the NIfTI standard's: the sform when its code is set, else the qform, else pixdim alone (ITK's
    choice too). A file whose qform and sform both claim a geometry but disagree, a sheared affine, non-positive
    or NaN voxel sizes and a NaN origin are refused: ITK would quietly pick, orthogonalise or replace them.
    """
    import gzip

    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    compressed, image_class = kind
    with (gzip.open if compressed else open)(path, "rb") as stream:
        holder = nib.FileHolder(fileobj=stream)
        try:
            # As stored: nibabel's checked header silently makes negative voxel sizes positive.
            stored = image_class.header_class.from_fileobj(stream, check=False)
            stream.seek(0)
            # In memory, as ITK reads it: a memory map would tie the volume to the input file.
            image = image_class.from_file_map({"header": holder, "image": holder}, mmap=False)
        except (HeaderDataError, OSError, ValueError, EOFError, zlib.error) as error:
            raise ImageReadError(f"{path}: not a readable medical image (NIfTI header: {error})") from None
        return _nifti_volume(path, image, stored, max_bytes)


def _nifti_volume(path: Path, image, stored, max_bytes: int | None) -> Volume:
    header = image.header
    shape = tuple(int(n) for n in header.get_data_shape())
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise InvalidImageError(f"{path}: a {len(shape)}D image; give one 2D image or 3D volume")
    _check_size(path, shape, header.get_data_dtype().itemsize, path.stat().st_size, max_bytes)
    affine = _nifti_affine(path, stored)
    try:
        array = np.asanyarray(image.dataobj)
    except (OSError, ValueError, EOFError, zlib.error) as error:
        raise ImageReadError(
            f"{path}: the NIfTI file is truncated or damaged ({error}); the copy or download is incomplete, get the "
            "file again"
        ) from None
    raw = header.get_data_dtype()
    if array.dtype == np.float64 and raw != np.float64:
        array = array.astype(np.float32)  # scl_slope scaling: float32, as ITK gives it
    array = array.reshape(shape + (1,) * (3 - len(shape)))
    if array.dtype.fields:  # RGB(A) NIfTI: a structured dtype
        array = np.stack([array[name] for name in array.dtype.names], axis=-1)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    spacing = np.linalg.norm(lps, axis=0)
    # nibabel gives (i, j, k[, components]); ITK arrays are (k, j, i[, components]).
    array = np.ascontiguousarray(array.transpose(2, 1, 0, *range(3, array.ndim)))
    origin, direction = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3], lps / spacing
    dims = 2 if len(shape) == 2 else 3  # a 2D NIfTI stays a 2D image, as ITK reads it
    if dims == 2:
        array, spacing, origin, direction = array[0], spacing[:2], origin[:2], direction[:2, :2]
    return Volume(
        array=array,
        spacing=tuple(map(float, spacing)),
        origin=tuple(map(float, origin)),
        direction=tuple(map(float, direction.ravel())),
        source=str(path),
    )


def _nifti_affine(path: Path, header) -> np.ndarray:
    """The voxel-to-RAS affine a NIfTI header states, refusing one that cannot be kept exactly (see _read_nifti)."""
    from nibabel.spatialimages import HeaderDataError

    zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not (np.isfinite(zooms).all() and (zooms > 0).all()):
        raise ImageReadError(
            f"{path}: the voxel sizes (pixdim {zooms.tolist()}) must be positive numbers; fix the header "
            "(e.g. with nibabel) before denoising"
        )
    try:
        sform = header.get_sform() if int(header["sform_code"]) > 0 else None
        qform = header.get_qform() if int(header["qform_code"]) > 0 else None
    except HeaderDataError as error:
        raise ImageReadError(f"{path}: the NIfTI orientation is invalid ({error}); fix the header first") from None
    if sform is not None and qform is not None and not np.allclose(sform, qform, atol=1e-3):
        raise ImageReadError(
            f"{path}: the header's qform and sform give different geometries; MedDenoise cannot tell which is "
            "right and writes one geometry, set both to the true one (e.g. nibabel's set_qform(img.get_sform()))"
        )
    affine = sform if sform is not None else qform if qform is not None else np.diag([*zooms, 1.0])
    if not np.isfinite(affine).all():
        raise ImageReadError(f"{path}: the NIfTI origin or orientation holds NaN/Inf; fix the header first")
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    _check_orthonormal(path, columns.T)
    return affine


def _read_netpbm(path: Path, max_bytes: int | None) -> sitk.Image:
    """PGM/PPM/PNM through imageio (ITK has no Netpbm reader); 16-bit files become uint16 (imageio gives int32)."""
    import imageio.v3 as iio
    from PIL import Image

    try:
        with Image.open(path) as picture:
            bands = len(picture.getbands())
            _check_size(
                path,
                picture.size[::-1],
                bands * (1 if picture.mode in ("L", "RGB") else 2),
                path.stat().st_size,
                max_bytes,
            )
        array = iio.imread(path)
    except ImageReadError:
        raise
    except Exception as error:  # imageio raises many types for a damaged file
        raise ImageReadError(f"{path}: not a readable Netpbm image ({error})") from None
    if array.dtype.kind == "i" and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
        array = array.astype(np.uint16)
    return sitk.GetImageFromArray(array, isVector=array.ndim == 3)


def _to_volume(image: sitk.Image, modality: str, source: str) -> Volume:
    if image.GetDimension() > 3:
        raise InvalidImageError(f"{source}: a {image.GetDimension()}D image; give one 2D image or 3D volume")
    if "complex" in image.GetPixelIDTypeAsString():
        raise InvalidImageError(f"{source}: complex-valued voxels; give a magnitude image")
    return Volume.from_sitk(image, modality, source)


def _checked(volume: Volume) -> Volume:
    """Content and geometry checks every reader's result passes: 2D/3D, real-valued, not empty, grey, and a geometry
    that can be written back exactly (finite positive spacing, finite origin, orthonormal axes)."""
    source, array = volume.source, volume.array
    if np.iscomplexobj(array):
        raise InvalidImageError(f"{source}: complex-valued voxels; give a magnitude image")
    dims = len(volume.spacing)
    if array.ndim - dims > 1 or dims > 3:
        raise InvalidImageError(f"{source}: a {max(dims, array.ndim)}D image; give one 2D image or 3D volume")
    if 0 in array.shape:
        raise InvalidImageError(f"{source}: the image is empty (size {array.shape})")
    spacing, origin = np.array(volume.spacing), np.array(volume.origin)
    if not (np.isfinite(spacing).all() and (spacing > 0).all() and np.isfinite(origin).all()):
        raise ImageReadError(
            f"{source}: the geometry is invalid (spacing {volume.spacing}, origin {volume.origin}); fix the header"
        )
    direction = np.array(volume.direction).reshape(dims, dims)
    if not np.isfinite(direction).all():
        raise ImageReadError(f"{source}: the orientation holds NaN/Inf; fix the header")
    _check_orthonormal(source, direction)
    if array.ndim > dims:  # vector pixels: grey RGB becomes grey, colour is refused
        components = array.shape[-1]
        colour = array[..., :3] if components >= 3 else array
        if not all(np.array_equal(colour[..., 0], colour[..., c]) for c in range(1, colour.shape[-1])):
            raise InvalidImageError(
                f"{source}: colour content ({components} channels that differ); MedDenoise denoises grey images — "
                "convert it to greyscale first"
            )
        volume.array = np.ascontiguousarray(colour[..., 0])
    return volume


def check_writable(
    path: str | os.PathLike, shape: tuple[int, ...] | None = None, dtype=None, overwrite: bool = True
) -> Path:
    """Refuse a target :func:`write_image` would fail on, before any work: an unknown extension, a missing, read-only
    or file-instead-of-folder parent, an existing file (without ``overwrite``) or folder, and (given ``shape`` and
    ``dtype``, the array's) a format that cannot hold the image. Returns ``path``.

    Raises:
        ImageWriteError: naming the target and what to do.
    """
    path = Path(path)
    ext = extension(path)
    if ext not in WRITE_EXTENSIONS:
        raise ImageWriteError(
            f"{path}: cannot write '{ext or 'no extension'}'; use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    if path.is_dir():
        raise ImageWriteError(f"{path}: cannot be written, a folder of that name exists; choose another name")
    if path.exists() and not overwrite:
        raise ImageWriteError(f"{path}: the file exists; choose another name or allow overwriting")
    if not path.parent.is_dir():
        raise ImageWriteError(f"{path}: the folder {path.parent} does not exist")
    try:  # a real file: permission bits, read-only file systems, quotas and ACLs all answer here
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise ImageWriteError(
            f"{path}: the folder {path.parent} is not writable ({error.strerror}); choose another output folder"
        ) from None
    if shape is not None:
        problem = format_problem(ext, shape, np.dtype(dtype))
        if problem:
            raise ImageWriteError(f"{path}: {problem}")
    return path


def format_problem(ext: str, shape: tuple[int, ...], dtype: np.dtype) -> str:
    """Why a file of extension ``ext`` cannot hold an array of ``shape`` and ``dtype`` (``""`` when it can)."""
    if ext in _PICTURE_WRITES:
        planes = [n for n in shape[:-2] if n != 1]
        if len(shape) > 3 or planes:
            return f"{ext} holds 2D images; write a {len(shape)}D volume as .nii.gz, .nrrd or .mha"
        if ext == ".png" and dtype not in (np.uint8, np.uint16):
            return f"PNG holds 8- or 16-bit unsigned pixels, not {dtype}; write .tif, .nrrd or .nii.gz instead"
    return ""


def write_image(path: str | os.PathLike, array: np.ndarray, like: Volume, overwrite: bool = True) -> Path:
    """Write ``array`` with ``like``'s geometry to ``path`` atomically; the format follows the extension.

    A single-slice volume written to a 2D format (PNG, TIFF) is written as a 2D image. NIfTI is written through
    nibabel and float16/float64 TIFF through tifffile, which raise when the disk fills (ITK reports a short NIfTI
    write on stderr only and returns as if it succeeded).
    """
    path = check_writable(path, array.shape, array.dtype, overwrite)
    ext = extension(path)
    if ext in _PICTURE_WRITES and array.ndim == 3:
        array = array[0]
    try:
        with atomic_file(path) as partial:
            if ext in (".nii", ".nii.gz"):
                _write_nifti(str(partial), array, like)
            elif ext in (".tif", ".tiff") and array.dtype in (np.float16, np.float64):
                import tifffile

                tifffile.imwrite(partial, array)
            else:
                with _sitk_quiet():
                    sitk.WriteImage(like.to_sitk(array), str(partial), useCompression=ext in (".nrrd", ".mha"))
    except (RuntimeError, OSError) as error:  # OSError: e.g. the disk is full
        raise ImageWriteError(
            f"{path}: cannot be written ({_last_line(error)}); free space or choose another folder"
        ) from None
    return path


def _write_nifti(path: str, array: np.ndarray, like: Volume) -> None:
    """NIfTI-1 with ``like``'s geometry as both qform and sform (scanner coordinates, mm), as ITK writes it."""
    import nibabel as nib

    spacing, direction, origin = np.ones(3), np.eye(3), np.zeros(3)
    dims = len(like.spacing)
    if dims == array.ndim:  # else the array is not shaped like ``like`` and gets no geometry, as in to_sitk
        spacing[:dims] = like.spacing
        direction[:dims, :dims] = np.reshape(like.direction, (dims, dims))
        origin[:dims] = like.origin
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction * spacing  # LPS (ITK) to RAS (NIfTI)
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ origin
    image = nib.Nifti1Image(array.T, affine)  # (k, j, i) to NIfTI's (i, j, k)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, path)


def _last_line(error: Exception) -> str:
    """The last non-empty line of an error message: ITK's start with a file:line location and end with the
    description (unlike PyTorch's, whose specific line comes second: ``scripts.engine._torch_error_detail``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
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
