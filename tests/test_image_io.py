"""Reading and writing real medical images: geometry round trips, DICOM series, bad input, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from scripts.errors import ImageReadError, ImageWriteError, InvalidImageError
from scripts.image_io import Volume, extension, read_image, stem, write_image


@pytest.fixture(scope="module")
def mni_crop(embedded) -> Volume:
    """The MNI152 T1 template (uint8, 1 mm) cropped to 24 x 40 x 36 voxels around the brain centre, geometry kept."""
    mni = read_image(embedded["training"][0]["image"])
    image = mni.to_sitk()[80:116, 90:130, 80:104]  # SimpleITK slicing is x, y, z and keeps the physical origin
    return Volume.from_sitk(image, source=mni.source)


def assert_same_geometry(result: Volume, reference: Volume) -> None:
    assert result.array.shape == reference.array.shape
    np.testing.assert_allclose(result.spacing, reference.spacing, rtol=1e-6)
    np.testing.assert_allclose(result.origin, reference.origin, atol=1e-4)
    np.testing.assert_allclose(result.direction, reference.direction, atol=1e-6)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
@pytest.mark.parametrize("name", ["ct", "mr", "mni"])
def test_round_trip_keeps_voxels_and_geometry(tmp_path, embedded, mni_crop, name, ext):
    source = {
        "ct": lambda: read_image(embedded["test"][0]["image"]),  # 1 x 512 x 512 int16 HU, 0.48 mm pixels
        "mr": lambda: read_image(embedded["training"][2]["image"]),  # 10-frame MR, uint16
        "mni": lambda: mni_crop,
    }[name]()
    written = write_image(tmp_path / f"{name}{ext}", source.array, like=source)
    result = read_image(written)
    assert_same_geometry(result, source)
    assert result.array.dtype == source.array.dtype
    np.testing.assert_array_equal(result.array, source.array)


def test_dicom_series_folder_reads_as_one_volume(dicom_series_dir, ct_volume_int16):
    volume = read_image(dicom_series_dir)
    assert volume.array.shape == ct_volume_int16.shape
    np.testing.assert_array_equal(volume.array, ct_volume_int16)
    assert volume.modality == "CT"
    assert volume.spacing[2] == pytest.approx(2.5)


def test_series_folder_with_two_series_names_both(tmp_path, ct_volume_int16):
    from conftest import write_dicom_series

    write_dicom_series(tmp_path, ct_volume_int16[:2])
    other = write_dicom_series(tmp_path / "other", ct_volume_int16[2:4])
    for path in other.iterdir():
        path.rename(tmp_path / f"other_{path.name}")
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        read_image(tmp_path)


def test_grey_rgb_picture_becomes_grey_and_colour_is_refused(tmp_path, ct_slice):
    grey = (ct_slice * 255).round().astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), str(tmp_path / "grey.png"))
    np.testing.assert_array_equal(read_image(tmp_path / "grey.png").array, grey)

    colour = np.stack([grey, grey[::-1], grey[:, ::-1]], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(tmp_path / "colour.png"))
    with pytest.raises(InvalidImageError, match=r"colour\.png: colour content"):
        read_image(tmp_path / "colour.png")


def test_4d_and_complex_images_are_refused(tmp_path, mni_crop):
    data = np.stack([mni_crop.array.T, mni_crop.array.T], axis=-1)  # x, y, z, t as NIfTI stores it
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "series4d.nii.gz")
    with pytest.raises(InvalidImageError, match=r"series4d\.nii\.gz: a 4D image"):
        read_image(tmp_path / "series4d.nii.gz")

    complex_data = mni_crop.array.T.astype(np.complex64) * np.exp(1j * 0.3).astype(np.complex64)
    nib.save(nib.Nifti1Image(complex_data, np.eye(4)), tmp_path / "phase.nii.gz")
    with pytest.raises(InvalidImageError, match=r"phase\.nii\.gz: complex-valued"):
        read_image(tmp_path / "phase.nii.gz")


def test_empty_unreadable_and_missing_files_are_named(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.nii\.gz: the file is empty"):
        read_image(tmp_path / "empty.nii.gz")
    (tmp_path / "notes.dcm").write_text("these are notes, not pixels\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.dcm: not a readable medical image"):
        read_image(tmp_path / "notes.dcm")
    with pytest.raises(ImageReadError, match=r"missing\.nrrd: no such file"):
        read_image(tmp_path / "missing.nrrd")
    (tmp_path / "no_dicom").mkdir()
    with pytest.raises(ImageReadError, match="holds no DICOM series"):
        read_image(tmp_path / "no_dicom")


def test_write_is_atomic_and_respects_overwrite(tmp_path, embedded):
    ct = read_image(embedded["test"][0]["image"])
    target = write_image(tmp_path / "ct.nrrd", ct.array, like=ct)
    before = target.read_bytes()
    with pytest.raises(ImageWriteError, match="the file exists"):
        write_image(target, ct.array + 1, like=ct, overwrite=False)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ct.nrrd"]  # no temporary file left behind
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # a normal file's mode, not mkstemp's private one


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_write_refuses_what_a_format_cannot_hold(tmp_path, embedded, mni_crop):
    ct = read_image(embedded["test"][0]["image"])
    with pytest.raises(ImageWriteError, match="PNG holds 8- or 16-bit unsigned"):
        write_image(tmp_path / "ct.png", ct.array, like=ct)
    with pytest.raises(ImageWriteError, match="png holds 2D images"):
        write_image(tmp_path / "brain.png", mni_crop.array, like=mni_crop)
    with pytest.raises(ImageWriteError, match=r"cannot write '\.dcm'"):
        write_image(tmp_path / "ct.dcm", ct.array, like=ct)
    with pytest.raises(ImageWriteError, match="does not exist"):
        write_image(tmp_path / "missing" / "ct.nii.gz", ct.array, like=ct)
    assert os.listdir(tmp_path) == []


def test_png_round_trip_is_2d(tmp_path, ct_slice):
    picture = Volume((ct_slice * 65535).round().astype(np.uint16), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    result = read_image(write_image(tmp_path / "slice.png", picture.array, like=picture))
    assert result.array.ndim == 2
    np.testing.assert_array_equal(result.array, picture.array)


@pytest.mark.parametrize("written, named", [(".jpg", ".png"), (".png", ".jpg"), (".tif", ".png"), (".bmp", ".tiff")])
def test_picture_is_read_by_its_content_whatever_its_extension(tmp_path, ct_slice, written, named):
    """Collections gathered from papers hold JPEGs named .png; each is read as what it is, not refused."""
    grey = (ct_slice * 255).round().astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / f"slice{written}"))
    (tmp_path / f"slice{written}").rename(tmp_path / f"misnamed{named}")
    result = read_image(tmp_path / f"misnamed{named}").array
    if written == ".jpg":  # lossy
        assert result.shape == grey.shape and np.abs(result.astype(int) - grey).mean() < 3
    else:
        np.testing.assert_array_equal(result, grey)


def test_names_handle_double_extensions():
    assert extension("a/b/brain.NII.GZ") == ".nii.gz"
    assert stem("a/b/brain.nii.gz") == "brain"
    assert stem(Path("series_folder")) == "series_folder"
