"""Damaged, mislabelled and unreachable files: every one gets an ImageReadError/InvalidImageError/ImageWriteError
naming it, or (when the damage hit bytes the format ignores) exactly the original voxels; never silently wrong data,
a raw exception or a changed input file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dicom_series
from reliability_tally import TALLY, fingerprint, report_at_end, unchanged

from scripts.errors import ImageReadError, ImageWriteError, InvalidImageError, MedDenoiseError
from scripts.image_io import read_image, write_image
from scripts.slices import check_volume

FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha", ".tif", ".png", ".dcm")
#: Cut points as fractions of the file, and the last byte alone.
CUTS = (0.01, 0.1, 0.5, 0.9, 0.99, -1)
#: Header bytes to invert: magic numbers, sizes, dimensions, data types and offsets of the formats above.
FLIPS = (0, 1, 4, 8, 16, 24, 40, 70, 108, 128, 132, 200, 344)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


@pytest.fixture(scope="module")
def originals(tmp_path_factory, embedded, ct_volume_int16) -> dict[str, tuple[Path, np.ndarray]]:
    """One real image per format: a CT slab written by MedDenoise, an 8-bit PNG of it, the real CQ500 DICOM file."""
    folder = tmp_path_factory.mktemp("originals")
    like = read_image(embedded["test"][0]["image"])
    slab = ct_volume_int16[:2, :48, :64]
    files = {}
    for ext in FORMATS[:4]:
        files[ext] = (write_image(folder / f"ct{ext}", slab, like=like), slab)
    files[".tif"] = (write_image(folder / "ct.tif", slab[0], like=like), slab[0])
    picture = ((slab[0] - slab.min()) * (255.0 / np.ptp(slab))).astype(np.uint8)
    files[".png"] = (write_image(folder / "ct.png", picture, like=like), picture)
    dicom = Path(shutil.copy(embedded["test"][0]["image"], folder / "ct.dcm"))
    files[".dcm"] = (dicom, like.array)
    return files


def read_damaged(path: Path, original: np.ndarray) -> np.ndarray | None:
    """Read a damaged file: a MedDenoiseError must name it; a successful read returns the array (or ``None``)."""
    before = fingerprint(path)
    TALLY.corrupted_files += 1
    try:
        array = read_image(path).array
    except (ImageReadError, InvalidImageError) as error:
        assert str(path) in str(error), f"the error does not name the file: {error}"
        array = None
    assert unchanged(path, before), f"reading modified {path}"
    return array


@pytest.mark.parametrize("ext", FORMATS)
def test_truncated_files_are_refused_never_zero_filled(originals, tmp_path, ext):
    source, original = originals[ext]
    content = source.read_bytes()
    for cut in CUTS:
        damaged = tmp_path / f"cut{cut}{ext}"
        damaged.write_bytes(content[: int(len(content) * cut) if cut > 0 else cut])
        array = read_damaged(damaged, original)
        # Some formats end in bytes a reader may skip (a gzip size, a TIFF tag); then the voxels must be exact.
        assert array is None or np.array_equal(array.reshape(original.shape), original), f"{damaged}: wrong voxels"
    empty = tmp_path / f"empty{ext}"
    empty.write_bytes(b"")
    assert read_damaged(empty, original) is None


@pytest.mark.parametrize("ext", FORMATS)
def test_flipped_header_bytes_give_a_named_error_or_a_valid_image(originals, tmp_path, ext):
    source, original = originals[ext]
    content = source.read_bytes()
    for offset in FLIPS:
        damaged = tmp_path / f"flip{offset}{ext}"
        damaged.write_bytes(content[:offset] + bytes([content[offset] ^ 0xFF]) + content[offset + 1 :])
        array = read_damaged(damaged, original)
        if array is not None:  # a flip the format cannot detect (no checksum): it must still be a usable image
            try:
                check_volume(array)
            except InvalidImageError as error:
                assert "NaN/Inf" in str(error) or "cannot denoise" in str(error)


@pytest.mark.parametrize("ext", FORMATS)
def test_wrong_extensions_read_by_content_or_are_named(originals, tmp_path, ext):
    source, original = originals[ext]
    for other in FORMATS:
        if other != ext:
            mislabelled = Path(shutil.copy(source, tmp_path / f"{ext.strip('.').replace('.', '_')}{other}"))
            array = read_damaged(mislabelled, original)
            assert array is None or np.array_equal(array.reshape(original.shape), original)


def test_damaged_dicom_series_folders_are_named(tmp_path, ct_volume_int16):
    mixed = write_dicom_series(tmp_path / "mixed", ct_volume_int16[:3])
    write_dicom_series(tmp_path / "other", ct_volume_int16[3:] + 100)
    for path in (tmp_path / "other").iterdir():
        path.rename(mixed / f"other_{path.name}")
    cut = write_dicom_series(tmp_path / "cut", ct_volume_int16[:4])
    last = sorted(cut.iterdir())[-1]
    last.write_bytes(last.read_bytes()[:-5000])
    sizes = write_dicom_series(tmp_path / "sizes", ct_volume_int16[:3])
    write_dicom_series(tmp_path / "small", ct_volume_int16[:1, :100, :100], series_uid=_series_uid(sizes))
    shutil.move(sorted((tmp_path / "small").iterdir())[0], sizes / "slice_small.dcm")
    for folder, message in ((mixed, "2 DICOM series"), (cut, ""), (sizes, "")):
        before = fingerprint(folder)
        TALLY.corrupted_files += 1
        try:
            array = read_image(folder).array
        except MedDenoiseError as error:
            assert str(folder) in str(error) and message in str(error), error
        else:
            assert folder is not mixed and array.shape[0] >= 3, f"{folder}: read a damaged series as {array.shape}"
        assert unchanged(folder, before)


def _series_uid(folder: Path) -> str:
    import pydicom

    return pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID


def test_unreadable_inputs_are_named(tmp_path, originals):
    source, _ = originals[".png"]
    inside_a_file = source / "image.nii.gz"
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    paths = [inside_a_file, empty_folder, tmp_path / "missing.nrrd"]
    if os.geteuid() != 0:  # root reads through permission bits, so chmod 000 only blocks other users
        locked = Path(shutil.copy(source, tmp_path / "locked.png"))
        locked.chmod(0)
        paths.append(locked)
    for path in paths:
        TALLY.corrupted_files += 1
        with pytest.raises(ImageReadError, match=str(path).replace(".", r"\.")):
            read_image(path)


def test_unwritable_outputs_are_named_and_leave_nothing(tmp_path, originals):
    source, original = originals[".nii.gz"]
    like = read_image(source)
    a_file = tmp_path / "a_file.txt"
    a_file.write_text("keep me")
    a_folder = tmp_path / "taken.nii.gz"
    a_folder.mkdir()
    targets = {
        a_file / "out.nii.gz": "does not exist",  # the parent is a file
        a_folder: "cannot be written",  # the target is a folder
        tmp_path / "no" / "such" / "out.nrrd": "does not exist",
        tmp_path / "out.jpg": "cannot write '.jpg'",
        tmp_path / "out.png": "2D images",
    }
    if os.geteuid() != 0:
        read_only = tmp_path / "read_only"
        read_only.mkdir(mode=0o555)
        targets[read_only / "out.nii.gz"] = "not writable"
    for target, message in targets.items():
        TALLY.corrupted_files += 1
        with pytest.raises(ImageWriteError, match=message) as error:
            write_image(target, original, like=like)
        assert str(target) in str(error.value)
    assert a_file.read_text() == "keep me" and a_folder.is_dir() and not list(a_folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "taken.nii.gz"]  # no partial files
