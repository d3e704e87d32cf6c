"""scripts/denoise.py on real files: formats, geometry, folders, overwrite, bad input, Ctrl-C."""

from __future__ import annotations

import hashlib
import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import ctrl_c_on

from scripts.image_io import Volume, read_image, write_image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "denoise.py"


@pytest.fixture(scope="module")
def denoise():
    """``denoise(*argv) -> exit code``: the tool's ``main`` run in this process (no interpreter start per call)."""
    spec = importlib.util.spec_from_file_location("denoise_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda *argv: module.main([str(arg) for arg in argv])


@pytest.fixture(scope="module")
def mni_nifti(embedded, tmp_path_factory) -> Path:
    """A 24 x 40 x 36 crop of the real MNI152 T1 template, written as NIfTI with its geometry."""
    mni = read_image(embedded["training"][0]["image"])
    crop = Volume.from_sitk(mni.to_sitk()[80:116, 90:130, 80:104])
    return write_image(tmp_path_factory.mktemp("mni") / "mni_crop.nii.gz", crop.array, like=crop)


def checksum(path: Path) -> str:
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(file.read_bytes() for file in files)).hexdigest()


def assert_same_geometry(result: Volume, source: Volume) -> None:
    assert result.array.shape == source.array.shape
    assert result.array.dtype == source.array.dtype
    np.testing.assert_allclose(result.spacing, source.spacing, rtol=1e-6)
    np.testing.assert_allclose(result.origin, source.origin, atol=1e-4)
    np.testing.assert_allclose(result.direction, source.direction, atol=1e-6)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha"])
def test_volume_file_keeps_geometry_and_input(denoise, mni_nifti, tmp_path, ext, capsys):
    before = checksum(mni_nifti)
    output = tmp_path / f"denoised{ext}"
    assert denoise(mni_nifti, "-o", output, "--device", "cpu") == 0
    assert checksum(mni_nifti) == before
    source, result = read_image(mni_nifti), read_image(output)
    assert_same_geometry(result, source)
    assert not np.array_equal(result.array, source.array)
    assert "denoised 1 file(s), 24 slices" in capsys.readouterr().out


def test_dicom_series_folder_and_file_into_a_folder(denoise, dicom_series_dir, embedded, tmp_path):
    ct_file = Path(embedded["test"][0]["image"])
    before = checksum(dicom_series_dir), checksum(ct_file)
    assert denoise(dicom_series_dir, ct_file, "-o", tmp_path / "out", "--window", -1000, 1000) == 0
    assert (checksum(dicom_series_dir), checksum(ct_file)) == before
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["693_UNCR.nii.gz", "ct_series.nii.gz"]
    for source in (dicom_series_dir, ct_file):
        result = read_image(tmp_path / "out" / (source.stem + ".nii.gz"))
        assert_same_geometry(result, read_image(source))
        assert result.array.dtype == np.int16 and result.array.min() < -900  # still HU


def test_png_in_png_out(denoise, ct_slice, tmp_path):
    picture = (ct_slice * 255).round().astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(picture), str(tmp_path / "slice.png"))
    assert denoise(tmp_path / "slice.png", "-o", tmp_path / "out/", "--strength", 0.5) == 0
    result = read_image(tmp_path / "out" / "slice.png")
    assert result.array.shape == picture.shape and result.array.dtype == np.uint8
    assert 0 < np.abs(result.array.astype(int) - picture).mean() < 20


@pytest.mark.slow
def test_axis_and_float_output(denoise, mni_nifti, tmp_path):
    assert denoise(mni_nifti, "-o", tmp_path / "axis2.nrrd", "--axis", 2, "--float-output", "--batch-size", 3) == 0
    result = read_image(tmp_path / "axis2.nrrd")
    assert result.array.dtype == np.float32 and result.array.shape == read_image(mni_nifti).array.shape


def test_existing_output_needs_overwrite(denoise, mni_nifti, tmp_path, capsys):
    output = tmp_path / "out.nii.gz"
    output.write_bytes(b"keep me")
    assert denoise(mni_nifti, "-o", output) == 1
    assert output.read_bytes() == b"keep me"
    assert "exists; use --overwrite" in capsys.readouterr().err
    assert denoise(mni_nifti, "-o", output, "--overwrite") == 0
    assert read_image(output).array.shape == read_image(mni_nifti).array.shape


def test_output_may_not_replace_input(denoise, mni_nifti, capsys):
    before = checksum(mni_nifti)
    assert denoise(mni_nifti, "-o", mni_nifti, "--overwrite") == 1
    assert "would replace its input" in capsys.readouterr().err
    assert checksum(mni_nifti) == before


def test_several_inputs_need_a_folder(denoise, mni_nifti, dicom_series_dir, tmp_path, capsys):
    assert denoise(mni_nifti, dicom_series_dir, "-o", tmp_path / "one.nii.gz") == 1
    assert "2 inputs need OUTPUT to be a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def write_bad_inputs(folder: Path, mni_nifti: Path) -> dict[str, str]:
    """Bad files made from real pixels, each with the words its error message must contain."""
    brain = nib.load(mni_nifti)
    data = np.asarray(brain.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), brain.affine), folder / "four_d.nii.gz")
    nib.save(nib.Nifti1Image(data.astype(np.complex64), brain.affine), folder / "complex.nii.gz")
    with_nan = read_image(mni_nifti).array.astype(np.float32)
    with_nan[3, 4, 5] = np.nan
    with_nan[6, 7, 8] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(with_nan), str(folder / "nan.nrrd"))
    slice_ = data[:, :, 12].astype(np.uint8)
    colour = np.stack([slice_, slice_[::-1], slice_], axis=-1)
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(folder / "colour.png"))
    (folder / "empty.nii.gz").write_bytes(b"")
    (folder / "garbage.nrrd").write_bytes(mni_nifti.read_bytes()[:300])  # a truncated file
    return {
        "four_d.nii.gz": "4D image",
        "complex.nii.gz": "complex-valued",
        "nan.nrrd": "2 NaN/Inf voxels",
        "colour.png": "colour content",
        "empty.nii.gz": "the file is empty",
        "garbage.nrrd": "truncated",
        "missing.mha": "no such file",
    }


@pytest.mark.slow
def test_bad_inputs_give_one_clear_line_naming_the_file(denoise, mni_nifti, tmp_path, capsys):
    for name, problem in write_bad_inputs(tmp_path, mni_nifti).items():
        assert denoise(tmp_path / name, "-o", tmp_path / "out" / "") == 1, name
        message = capsys.readouterr().err.strip()
        assert message.startswith("denoise.py: error: ") and "\n" not in message, message
        assert name in message and problem in message, message
    assert list((tmp_path / "out").iterdir()) == []


def test_constant_image_is_denoised_without_errors(denoise, tmp_path):
    flat = Volume(np.full((3, 32, 40), 70, np.int16), (0.5, 0.5, 2.0), (1.0, 2.0, 3.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    source = write_image(tmp_path / "flat.nrrd", flat.array, like=flat)
    assert denoise(source, "-o", tmp_path / "flat_out.nrrd") == 0
    assert np.abs(read_image(tmp_path / "flat_out.nrrd").array.astype(int) - 70).max() <= 1


def test_bundle_whose_weights_do_not_fit_is_refused(denoise, mni_nifti, tmp_path, capsys):
    from test_engine import copy_bundle

    bundle = copy_bundle(tmp_path, {"_target_": "scripts.networks.DenoisingAutoencoder", "features": [16, 16]})
    assert denoise(mni_nifti, "-o", tmp_path / "out.nii.gz", "--bundle", bundle) == 1
    assert "do not fit network_def" in capsys.readouterr().err
    assert not (tmp_path / "out.nii.gz").exists()


@pytest.mark.slow
def test_ctrl_c_leaves_no_output(embedded, tmp_path):
    """A real interpreter gets SIGINT in the middle of a volume: exit 130, no output and no temporary file."""
    mni = read_image(embedded["training"][0]["image"])  # 189 slices of 233 x 197: many seconds of work
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), mni.source, "-o", str(out / "mni.nii.gz"), "--batch-size", "1"]
    out.mkdir()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_on)
    seen = ""
    deadline = time.monotonic() + 120
    while "slice" not in seen and time.monotonic() < deadline:  # tqdm's bar: denoising has started
        seen += process.stderr.read(1)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, seen + err
    assert "interrupted" in err
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_self_ensemble_flag_averages_the_eight_views(denoise, mni_nifti, tmp_path, shipped_model):
    from scripts.engine import denoise_volume

    assert denoise(mni_nifti, "-o", tmp_path / "ensemble.nii.gz", "--views", 8, "--float-output") == 0
    written = read_image(tmp_path / "ensemble.nii.gz").array
    volume = read_image(mni_nifti).array
    expected = denoise_volume(volume, shipped_model, float_output=True, views=8)
    np.testing.assert_allclose(written, expected, atol=1e-3)
    assert not np.allclose(written, denoise_volume(volume, shipped_model, float_output=True), atol=1e-2)
