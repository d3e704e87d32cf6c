"""Input files that an independent attack (issue 29) found read wrongly: geometry that would change, voxels read as
other values, damaged pixel data accepted, valid files refused, decompression bombs, detached headers reaching
outside their folder. Each is refused by name before any voxel is used, or read exactly; no input ever changes."""

from __future__ import annotations

import copy
import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import write_dicom_series
from reliability_tally import TALLY, fingerprint, report_at_end, unchanged

from scripts.errors import ImageReadError, InvalidImageError
from scripts.image_io import Volume, read_image, write_image
from scripts.intensity import IntensityWindow
from scripts.slices import check_volume


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


def refused(path: Path, match: str, **kwargs) -> None:
    """``read_image`` refuses ``path`` with a message naming it and containing ``match``; the input is unchanged."""
    before = fingerprint(path)
    TALLY.corrupted_files += 1
    with pytest.raises((ImageReadError, InvalidImageError), match=match) as error:
        read_image(path, **kwargs)
    assert str(path) in str(error.value)
    assert unchanged(path, before)


def read_exactly(path: Path, **kwargs):
    before = fingerprint(path)
    TALLY.corrupted_files += 1
    volume = read_image(path, **kwargs)
    assert unchanged(path, before)
    return volume


# --- DICOM series and multi-frame geometry -------------------------------------------------------------------------


def edit_slices(folder: Path, edit) -> Path:
    """Apply ``edit(k, dataset)`` to every slice file of a series folder (sorted by name) and save it."""
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        edit(k, ds)
        ds.save_as(path)
    return folder


@pytest.mark.parametrize(
    ("case", "edit", "message"),
    [
        ("gap", lambda k, ds: setattr(ds, "ImagePositionPatient", [0, 0, 2.5 * k + (20 if k >= 3 else 0)]), "evenly"),
        ("duplicate", lambda k, ds: setattr(ds, "ImagePositionPatient", [0, 0, 2.5 * min(k, 4)]), "evenly"),
        ("identical", lambda k, ds: setattr(ds, "ImagePositionPatient", [0, 0, 0]), "share one position"),
        ("mixed", lambda k, ds: k == 2 and setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "orientations"),
        ("tilted", lambda k, ds: setattr(ds, "ImagePositionPatient", [0, 1.2 * k, 2.5 * k]), "sideways"),
        ("skewed", lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.6, 0.8, 0.3]), "right angles"),
        ("unplaced", lambda k, ds: delattr(ds, "ImagePositionPatient"), "one by one"),
    ],
)
def test_dicom_series_a_volume_cannot_hold_is_refused(tmp_path, ct_volume_int16, case, edit, message):
    folder = edit_slices(write_dicom_series(tmp_path / case, ct_volume_int16), edit)
    refused(folder, message)


def test_even_dicom_series_keeps_its_spacing(tmp_path, ct_volume_int16):
    folder = write_dicom_series(tmp_path / "even", ct_volume_int16, spacing=(0.7, 0.7, 3.25))
    volume = read_exactly(folder)
    assert volume.spacing[2] == pytest.approx(3.25) and np.array_equal(volume.array, ct_volume_int16)


def test_single_dicom_with_skewed_orientation_is_refused(tmp_path, ct_volume_int16):
    folder = edit_slices(
        write_dicom_series(tmp_path / "one", ct_volume_int16[:1]),
        lambda k, ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0.5, 0.5, 0]),
    )
    refused(next(folder.iterdir()), "right angles")


def enhanced_ct(path: Path, z=(-159.0, -149.0, -139.0), orientations=None) -> Path:
    """The real enhanced CT of pydicom-data (eCT_Supplemental, 2 frames) grown to ``len(z)`` frames at those
    positions, each frame optionally with its own orientation."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    frame_bytes = len(ds.PixelData) // ds.NumberOfFrames
    frames = list(ds.PerFrameFunctionalGroupsSequence)
    while len(frames) < len(z):
        frames.append(copy.deepcopy(frames[-1]))  # the last frame's groups
    for k, frame in enumerate(frames):
        frame.PlanePositionSequence[0].ImagePositionPatient = [99.5, -301.5, z[k]]
        if orientations:
            orientation = pydicom.Dataset()
            orientation.ImageOrientationPatient = orientations[k]
            frame.PlaneOrientationSequence = [orientation]
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = (ds.PixelData + ds.PixelData[:frame_bytes] * len(z))[: frame_bytes * len(z)]
    ds.NumberOfFrames = len(z)
    ds.save_as(path)
    return path


def test_enhanced_multiframe_geometry_is_kept_or_refused(tmp_path):
    even = read_exactly(enhanced_ct(tmp_path / "even.dcm", z=(-159.0, -151.5, -144.0)))
    assert even.array.shape[0] == 3 and even.spacing[2] == pytest.approx(7.5)
    refused(enhanced_ct(tmp_path / "uneven.dcm", z=(-159.0, -149.0, -119.0)), "evenly")
    axial, sagittal = [-1, 0, 0, 0, 1, 0], [0, 1, 0, 0, 0, -1]
    refused(enhanced_ct(tmp_path / "turned.dcm", orientations=[axial, axial, sagittal]), "orientations")


# --- NIfTI geometry --------------------------------------------------------------------------------------------------

#: A 90-degree rotation about z and a 10 / -20 / 30 mm shift (RAS, as NIfTI stores it).
TURNED = np.array([[0.0, -1.2, 0, 10], [1.2, 0, 0, -20], [0, 0, 2.0, 30], [0, 0, 0, 1]])


def nifti(path: Path, data: np.ndarray, qform=None, sform=None, edit=None) -> Path:
    """An uncompressed NIfTI-1 of ``data``; ``edit(header)`` changes header fields after nibabel wrote them (nibabel
    itself refuses or rewrites such values)."""
    image = nib.Nifti1Image(data, None)
    image.set_qform(qform, code=1 if qform is not None else 0)
    image.set_sform(sform, code=2 if sform is not None else 0)
    nib.save(image, path)
    if edit:
        header = nib.Nifti1Header.from_fileobj(io.BytesIO(path.read_bytes()[:348]))
        edit(header)
        path.write_bytes(header.binaryblock + path.read_bytes()[348:])
    return path


def nifti_affine(volume) -> np.ndarray:
    """The RAS voxel-to-world affine of a read volume (SimpleITK's LPS geometry turned back)."""
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = flip @ np.reshape(volume.direction, (3, 3)) * np.array(volume.spacing)
    affine[:3, 3] = flip @ np.array(volume.origin)
    return affine


def test_nifti_sform_is_kept_exactly_through_a_round_trip(tmp_path, ct_volume_int16):
    data = ct_volume_int16.T  # NIfTI's (i, j, k)
    source = nifti(tmp_path / "sform_only.nii.gz", data, sform=TURNED)
    volume = read_exactly(source)
    np.testing.assert_allclose(nifti_affine(volume), TURNED, atol=1e-5)  # ITK gave the pixdim identity here
    written = write_image(tmp_path / "out.nii.gz", volume.array, like=volume)
    back = nib.load(written)
    np.testing.assert_allclose(back.affine, TURNED, atol=1e-5)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)


@pytest.mark.parametrize(
    ("case", "qform", "sform", "edit", "message"),
    [
        ("disagree", np.eye(4), TURNED, None, "qform and sform"),
        ("sheared", np.eye(4), np.array([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), None, "qform"),
        ("sheared_alone", None, np.array([[1.0, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), None, "angles"),
        ("negative_pixdim", np.eye(4), None, lambda h: h["pixdim"].__setitem__(1, -1.5), "positive"),
        ("nan_pixdim", None, None, lambda h: h["pixdim"].__setitem__(2, np.nan), "positive"),
        ("nan_origin", None, TURNED, lambda h: h["srow_y"].__setitem__(3, np.nan), "NaN"),
        ("nan_qoffset", np.eye(4), None, lambda h: h.__setitem__("qoffset_x", np.nan), "NaN"),
    ],
)
def test_nifti_geometry_that_cannot_be_kept_is_refused(tmp_path, case, qform, sform, edit, message):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    refused(nifti(tmp_path / f"{case}.nii", data, qform, sform, edit), message)


# --- Voxels read as other values ----------------------------------------------------------------------------------


def test_float16_and_float64_tiff_keep_their_values(tmp_path, ct_slice):
    import tifffile

    for dtype in (np.float16, np.float64):
        values = (0.13 + 0.73 * ct_slice[:64, :80]).astype(dtype)
        path = tmp_path / f"{np.dtype(dtype).name}.tif"
        tifffile.imwrite(path, values)
        volume = read_exactly(path)
        np.testing.assert_array_equal(volume.array, values.astype(volume.array.dtype))
        assert volume.array.dtype.kind == "f"
        written = write_image(tmp_path / f"out_{path.name}", volume.array, like=volume)
        np.testing.assert_array_equal(tifffile.imread(written), volume.array)


@pytest.mark.parametrize("where", ["some", "all"])
def test_nan_and_inf_in_float_nifti_are_seen_and_refused(tmp_path, ct_slice, where):
    data = np.repeat(ct_slice[:32, :40, None], 3, axis=2)
    if where == "all":
        data[:] = np.nan
    else:
        data[3, 4, 1], data[5, 6, 2] = np.nan, np.inf
    path = nifti(tmp_path / f"nan_{where}.nii", data, qform=np.eye(4))
    volume = read_exactly(path)  # ITK read NaN as 0
    with pytest.raises(InvalidImageError, match="NaN/Inf"):
        check_volume(volume.array)


@pytest.mark.parametrize(
    ("case", "edit"),
    [
        ("rows", lambda ds: setattr(ds, "Rows", 2 * ds.Rows)),
        (
            "bits",
            lambda ds: (setattr(ds, "BitsAllocated", 32), setattr(ds, "BitsStored", 32), setattr(ds, "HighBit", 31)),
        ),
        ("samples", lambda ds: (setattr(ds, "SamplesPerPixel", 3), setattr(ds, "PlanarConfiguration", 0))),
    ],
)
def test_dicom_header_that_disagrees_with_its_pixels_is_refused(tmp_path, ct_volume_int16, case, edit):
    folder = write_dicom_series(tmp_path / case, ct_volume_int16[:3])
    path = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(path)
    edit(ds)
    ds.save_as(path)
    refused(path, "pixel data holds")
    refused(folder, "pixel data holds")


def test_fragments_under_a_native_transfer_syntax_are_left_to_the_decoder(tmp_path, ct_volume_int16):
    """Some real files (a Hologic mammogram of fo-dicom's test set, which GDCM decodes) label JPEG fragments as native
    pixel data of undefined length. The pixel-length check leaves them to the decoder instead of refusing them as
    holding 4294967295 bytes."""
    from pydicom.uid import RLELossless

    from scripts.image_io import _check_dicom_pixels

    path = sorted(write_dicom_series(tmp_path / "series", ct_volume_int16[:3]).iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    raw = path.read_bytes()  # the two UIDs have the same length, so the file stays well formed
    path.write_bytes(raw.replace(str(RLELossless).encode() + b"\0", b"1.2.840.10008.1.2.1\0", 1))
    assert pydicom.dcmread(path, defer_size=1024).get_item("PixelData", keep_deferred=True).length == 0xFFFFFFFF
    _check_dicom_pixels(path)


@pytest.mark.parametrize("ext", [".jpg", ".bmp"])
def test_truncated_jpeg_and_bmp_are_refused(tmp_path, ct_slice, ext):
    from PIL import Image

    whole = tmp_path / f"whole{ext}"
    Image.fromarray((ct_slice * 255).astype(np.uint8)).save(whole)
    content = whole.read_bytes()
    assert read_exactly(whole).array.shape == ct_slice.shape
    for fraction in (0.5, 0.7, 0.9):
        cut = tmp_path / f"cut{int(fraction * 100)}{ext}"
        cut.write_bytes(content[: int(len(content) * fraction)])
        refused(cut, "truncated|damaged")


# --- Valid files once refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize("comment", [200, 4000])
def test_nifti_with_extensions_and_nifti2_are_read(tmp_path, ct_volume_int16, comment):
    data = ct_volume_int16.T
    image = nib.Nifti1Image(data, TURNED)
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"c" * comment))
    nib.save(image, tmp_path / "extended.nii.gz")
    nib.save(nib.Nifti2Image(data, TURNED), tmp_path / "two.nii")
    for name in ("extended.nii.gz", "two.nii"):
        volume = read_exactly(tmp_path / name)
        np.testing.assert_array_equal(volume.array, ct_volume_int16)
        np.testing.assert_allclose(nifti_affine(volume), TURNED, atol=1e-5)


# --- Decompression bombs: refused from the header, before allocating ------------------------------------------------


def png_bomb(path: Path, side: int) -> Path:
    """A greyscale PNG of ``side`` x ``side`` zeros, compressed row by row (a few hundred KB for 20000^2)."""
    compressor, row = zlib.compressobj(9), b"\0" * (side + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def gzip_zeros(stream, size: int) -> None:
    block = b"\0" * (1 << 22)
    for start in range(0, size, len(block)):
        stream.write(block[: size - start])


def nifti_bomb(path: Path, side: int) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), 1)
    with gzip.open(path, "wb", compresslevel=9) as stream:
        stream.write(header.binaryblock + b"\0" * 4)  # the 4-byte extension flag: data at offset 352
        gzip_zeros(stream, side**3)
    return path


def nrrd_bomb(path: Path, side: int) -> Path:
    head = f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: {side} {side} {side}\nencoding: gzip\n\n".encode()
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9) as stream:
        gzip_zeros(stream, side**3)
    path.write_bytes(head + buffer.getvalue())
    return path


@pytest.mark.slow
def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    bombs = [png_bomb(tmp_path / "bomb.png", 20000), nifti_bomb(tmp_path / "bomb.nii.gz", 1024)]
    bombs.append(nrrd_bomb(tmp_path / "bomb.nrrd", 640))  # 250 MiB from about 250 KB
    for bomb in bombs:
        assert bomb.stat().st_size < 2 << 20
        refused(bomb, r"decompression bomb.*--max-image-mb")


def test_size_limits_are_stated_and_overridable(tmp_path, ct_volume_int16):
    bomb = nrrd_bomb(tmp_path / "zeros.nrrd", 416)  # 69 MiB of zeros: over the 100x rule, under 2 GiB
    refused(bomb, "decompression bomb")
    assert read_exactly(bomb, max_bytes=80 << 20).array.shape == (416, 416, 416)
    refused(bomb, r"over the limit of 60 MiB", max_bytes=60 << 20)
    plain = write_image(
        tmp_path / "ct.nrrd", ct_volume_int16, like=read_image(write_dicom_series(tmp_path / "s", ct_volume_int16))
    )
    refused(plain, "over the limit", max_bytes=ct_volume_int16.nbytes - 1)


# --- Detached headers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["nhdr", "mhd", "mha"])
def test_detached_header_reads_only_its_own_data_file(tmp_path, fmt):
    folder = tmp_path / "images"
    folder.mkdir()
    outside = tmp_path / "secret.raw"
    outside.write_bytes(bytes(range(256)) * 16)
    (folder / "image.raw").write_bytes(bytes(range(256)) * 16)
    (folder / "link.raw").symlink_to(outside)
    os.mkfifo(folder / "pipe.raw")

    def header(name: str, data: str) -> Path:
        text = (
            f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 64\nencoding: raw\ndata file: {data}\n"
            if fmt == "nhdr"
            else f"ObjectType = Image\nNDims = 2\nDimSize = 64 64\nElementType = MET_UCHAR\nElementDataFile = {data}\n"
        )
        path = folder / f"{name}.{fmt}"
        path.write_text(text)
        return path

    volume = read_exactly(header("good", "image.raw"))
    np.testing.assert_array_equal(volume.array.ravel(), np.frombuffer(bytes(range(256)) * 16, np.uint8))
    for name, data in {
        "parent": "../secret.raw",
        "absolute": str(outside),
        "etc": "/etc/passwd",
        "proc": "/proc/self/environ",
        "zero": "/dev/zero",
        "stdin": "/dev/stdin",
        "link": "link.raw",
        "pipe": "pipe.raw",
        "folder": ".",
    }.items():
        refused(header(name, data), "not a regular file in the header's folder")


@pytest.mark.parametrize(
    ("name", "header", "message"),
    [
        ("nan_offset.mhd", "NDims = 2\nDimSize = 64 64\nElementType = MET_UCHAR\nOffset = nan 0", "NaN"),
        ("inf_spacing.mhd", "NDims = 2\nDimSize = 64 64\nElementType = MET_UCHAR\nElementSpacing = inf 1", "NaN"),
        ("nan_origin.nhdr", "NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 64\nspace origin: (nan,0)", "NaN"),
        (
            "skewed.nhdr",
            "NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\nsizes: 16 16 16\n"
            "space directions: (1,0,0) (0.5,1,0) (0,0,1)",
            "right angles",
        ),
    ],
)
def test_text_header_geometry_that_cannot_be_kept_is_refused(tmp_path, name, header, message):
    (tmp_path / "image.raw").write_bytes(bytes(range(256)) * 16)
    data = "data file: image.raw\nencoding: raw" if name.endswith(".nhdr") else "ElementDataFile = image.raw"
    prefix = "" if name.endswith(".nhdr") else "ObjectType = Image\n"
    (tmp_path / name).write_text(f"{prefix}{header}\n{data}\n")
    refused(tmp_path / name, message)  # ITK read the NaN as 0 and the skew as given


def test_special_files_are_refused_as_inputs(tmp_path):
    os.mkfifo(tmp_path / "pipe.nrrd")
    for path in (Path("/dev/zero"), tmp_path / "pipe.nrrd"):
        TALLY.corrupted_files += 1
        if path.exists():
            with pytest.raises(ImageReadError, match="not a regular file"):
                read_image(path)


@pytest.mark.slow
def test_a_huge_radiograph_is_denoised_in_tiles(ct_slice, shipped_model):
    """A slice over ``tile`` x ``tile`` pixels reaches the network in tiles (memory bounded by the tile, not the
    image) and the result matches denoising it whole. Tiles of 512 here, 2048 in use, so that it runs in seconds."""
    from scripts import engine

    model = shipped_model
    noise = np.random.default_rng(0).normal(0, 0.05, (800, 820))
    plane = np.clip(np.tile(ct_slice, (2, 2))[:800, :820] + noise, 0, 1).astype(np.float32)  # real CT texture, noisy
    seen = []
    hook = model.network.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[-2:]))
    tiled = engine.denoise_volume(plane, model, tile=512)
    hook.remove()
    assert len(seen) == 4 and max(height * width for height, width in seen) <= 512**2, seen
    whole = engine.denoise_volume(plane, model, tile=1024, batch_size=1)  # the whole slice at once
    difference = tiled - whole
    assert np.abs(difference).mean() < 0.02 * np.abs(whole - plane).mean()  # measured 0.7 %
    assert 10 * np.log10(1 / np.mean(difference**2)) > 50  # measured 64 dB


class PixelwiseNetwork(torch.nn.Module):
    """A 3x3 smoothing convolution: the engine's own arrays, not the network, are what the memory test measures."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
        torch.nn.init.constant_(self.conv.weight, 1 / 9)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.conv(batch)


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_a_huge_slice_stays_within_the_stated_memory_budget(dtype):
    """Issue 29: the engine's whole-slice arrays (window, network input and output, blend, cast) grew with the image
    (a 20000^2 PNG reached 8.6 GB); now besides the input and the output it holds one tile's arrays, at most
    PASS_BYTES_PER_PIXEL x channels x tile^2 bytes, and two bands of blended rows, 8 x tile x width bytes (NumPy's
    allocations as tracemalloc counts them; the network's activations are one tile's, as the test above shows). A
    1500 x 1300 slice in tiles of 384: the budget is 8.3 MiB (measured 6.1), one pass peaked 35-45 MiB."""
    import tracemalloc

    from scripts.engine import PASS_BYTES_PER_PIXEL, LoadedModel, denoise_volume

    model = LoadedModel(PixelwiseNetwork().eval(), torch.device("cpu"))
    image = np.random.default_rng(0).integers(100, 4000, (1500, 1300)).astype(dtype)
    before = fingerprint(image)
    TALLY.bad_inputs += 1
    window = IntensityWindow(0.0, 4096.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small convolution's threads wait for each other on a busy CPU (0.3 s a tile)
    tracemalloc.start()
    try:
        denoised = denoise_volume(image, model, window, tile=384)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        torch.set_num_threads(threads)
    budget = PASS_BYTES_PER_PIXEL * 384**2 + 8 * 384 * image.shape[1]
    assert peak - denoised.nbytes <= budget, f"{(peak - denoised.nbytes) / 2**20:.1f} MiB over the output"
    assert denoised.shape == image.shape and denoised.dtype == image.dtype
    whole = denoise_volume(image, model, window, tile=1500)  # one pass
    # the tiles meet without a seam: a filter's zero padding at a tile's inner edge weighs 1/256 there (measured 7-8)
    np.testing.assert_allclose(denoised.astype(np.float32), whole.astype(np.float32), atol=0.0025 * window.width)
    assert unchanged(image, before)


def test_a_tile_too_small_for_its_context_is_refused():
    from scripts.engine import TILE_OVERLAP, LoadedModel, denoise_volume

    TALLY.bad_inputs += 1
    model = LoadedModel(PixelwiseNetwork().eval(), torch.device("cpu"))
    with pytest.raises(InvalidImageError, match=f"tile side {2 * TILE_OVERLAP} must be more than {2 * TILE_OVERLAP}"):
        denoise_volume(np.zeros((300, 300), np.float32), model, tile=2 * TILE_OVERLAP)


def test_the_command_line_sets_the_tile(tmp_path, ct_slice, capsys):
    """``denoise.py --tile``: a smaller tile for a big slice gives nearly the same image, and a tile too small for its
    overlap is refused by argparse before anything is read."""
    from conftest import load_script

    cli = load_script("denoise")
    noise = np.random.default_rng(0).normal(0, 0.05, (700, 650))
    plane = (np.clip(np.tile(ct_slice, (2, 2))[:700, :650] + noise, 0, 1) * 4000).astype(np.uint16)
    source = write_image(tmp_path / "big.nrrd", plane, like=Volume(plane, (0.2, 0.2), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    before = fingerprint(source)
    TALLY.bad_inputs += 1
    for name, tile in (("whole.nrrd", []), ("tiled.nrrd", ["--tile", "512"])):
        assert (
            cli.main([str(source), "-o", str(tmp_path / name), "--device", "cpu", "--precision", "float32", *tile]) == 0
        )
    whole, tiled = (read_image(tmp_path / name).array.astype(np.float32) for name in ("whole.nrrd", "tiled.nrrd"))
    # tiled (the network's whole-image statistics differ from tile to tile), and close: measured 2.0 %
    assert 0 < np.abs(tiled - whole).mean() < 0.03 * np.abs(whole - plane).mean()
    with pytest.raises(SystemExit) as refusal:
        cli.main([str(source), "-o", str(tmp_path / "small.nrrd"), "--tile", "200"])
    assert refusal.value.code == 2 and "must be more than 256 pixels" in capsys.readouterr().err
    assert unchanged(source, before)
