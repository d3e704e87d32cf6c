"""The bundle's inference config and its TorchScript export, run the way MONAI runs them."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ckpt_export, run

from scripts.bundle_archive import record_hashes
from scripts.engine import BUNDLE_ROOT, denoise_volume, load_bundle
from scripts.errors import BundleError
from scripts.image_io import Volume, read_image, write_image

CONFIGS = BUNDLE_ROOT / "configs"


def test_network_def_matches_training():
    inference = json.loads((CONFIGS / "inference.json").read_text())
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    assert inference["network_def"] == train["network_def"]


@pytest.mark.slow
def test_run_denoises_a_folder_keeping_geometry_and_sub_folders(tmp_path, dicom_series_dir, embedded, shipped_model):
    dataset = tmp_path / "dataset"
    shutil.copytree(dicom_series_dir, dataset / "patient1" / "ct_series")
    mr = read_image(embedded["validation"][1]["image"])  # pydicom's MR_small: 64 x 64 int16
    write_image(dataset / "mr.nrrd", mr.array, like=mr)
    (dataset / "broken.nii.gz").write_bytes(b"not an image")  # reported and skipped; the folder goes on
    output_dir = tmp_path / "eval"
    run(
        config_file=str(CONFIGS / "inference.json"),
        dataset_dir=str(dataset),
        output_dir=str(output_dir),
        device="$torch.device('cpu')",
    )
    written = sorted(str(path.relative_to(output_dir)) for path in output_dir.rglob("*.nii.gz"))
    assert written == ["mr_denoised.nii.gz", "patient1/ct_series_denoised.nii.gz"]
    # the config's file pipeline gives exactly what the engine gives in one call
    model = shipped_model
    expected = denoise_volume(mr.array, model)
    np.testing.assert_array_equal(read_image(output_dir / written[0]).array, expected)
    for source, result in [
        (read_image(dicom_series_dir), read_image(output_dir / written[1])),
        (mr, read_image(output_dir / written[0])),
    ]:
        assert result.array.shape == source.array.shape and result.array.dtype == source.array.dtype
        np.testing.assert_allclose(result.spacing, source.spacing, rtol=1e-6)
        np.testing.assert_allclose(result.origin, source.origin, atol=1e-4)
        np.testing.assert_allclose(result.direction, source.direction, atol=1e-6)
        assert not np.array_equal(result.array, source.array)
    assert sorted(path.name for path in (dataset / "patient1" / "ct_series").iterdir()) == sorted(
        path.name for path in dicom_series_dir.iterdir()
    )


@pytest.fixture(scope="module")
def exported_bundle(tmp_path_factory):
    """A copy of the bundle with ``models/model.ts`` exported by MONAI's ``ckpt_export`` from ``models/model.pt``."""
    folder = tmp_path_factory.mktemp("exported") / "bundle"
    shutil.copytree(CONFIGS, folder / "configs")
    shutil.copytree(BUNDLE_ROOT / "models", folder / "models", ignore=shutil.ignore_patterns("*.ts"))
    shutil.copy(BUNDLE_ROOT / "large_files.yml", folder)
    ckpt_export(
        net_id="network_def",
        filepath=str(folder / "models" / "model.ts"),
        ckpt_file=str(folder / "models" / "model.pt"),
        meta_file=str(folder / "configs" / "metadata.json"),
        config_file=str(folder / "configs" / "inference.json"),
    )
    record_hashes(folder)
    return folder


def test_torchscript_equals_checkpoint_on_a_real_slice(exported_bundle, ct_slice):
    checkpoint = load_bundle(exported_bundle, device="cpu")
    # loaded directly: the engine runs only the shipped export (a TorchScript file is a program), and this one is new
    scripted = torch.jit.load(str(exported_bundle / "models" / "model.ts"))
    odd = torch.from_numpy(np.ascontiguousarray(ct_slice[None, None, 100:281, 150:367]))  # 181 x 217: padded inside
    with torch.inference_mode():
        expected, actual = checkpoint.network(odd), scripted(odd)
    assert actual.shape == odd.shape
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_engine_runs_from_torchscript(ct_volume_int16):
    volume = ct_volume_int16[:3, :96, :112]
    # float32 both: bfloat16 rounds the two graphs' sums differently
    checkpoint = load_bundle(BUNDLE_ROOT, device="cpu", precision="float32")
    from_checkpoint = denoise_volume(volume, checkpoint, float_output=True)
    scripted = load_bundle(BUNDLE_ROOT, device="cpu", torchscript=True, precision="float32")
    np.testing.assert_allclose(denoise_volume(volume, scripted, float_output=True), from_checkpoint, atol=1e-2)


def test_missing_or_broken_torchscript_is_named(tmp_path, exported_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(exported_bundle, bundle, ignore=shutil.ignore_patterns("*.ts"))
    with pytest.raises(BundleError, match="TorchScript model is missing"):
        load_bundle(bundle, device="cpu", torchscript=True)
    (bundle / "models" / "model.ts").write_bytes((bundle / "models" / "model.pt").read_bytes())
    with pytest.raises(BundleError, match="does not match the sha256"):
        load_bundle(bundle, device="cpu", torchscript=True)
    record_hashes(bundle)
    with pytest.raises(BundleError, match="not MedDenoise's own export"):
        load_bundle(bundle, device="cpu", torchscript=True)


def test_a_flat_picture_folder_with_a_window(tmp_path, ct_slice):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    image = (ct_slice[:128, :160] * 255).round().astype(np.uint8)
    write_image(pictures / "slice.png", image, like=Volume(image, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0)))
    run(
        config_file=str(CONFIGS / "inference.json"),
        dataset_dir=str(pictures),
        output_dir=str(tmp_path / "out"),
        window=[0, 255],
        output_ext=".png",
        strength=0.5,
        device="$torch.device('cpu')",
    )
    result = read_image(tmp_path / "out" / "slice_denoised.png").array
    assert result.shape == image.shape and result.dtype == np.uint8
    assert 0 < np.abs(result.astype(int) - image).mean() < 20


def test_command_line_runs_from_torchscript(dicom_series_dir, tmp_path):
    """The shipped bundle's own export (the only TorchScript file the engine runs) against its checkpoint."""
    from test_denoise_cli import SCRIPT

    spec = importlib.util.spec_from_file_location("denoise_cli_ts", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "ct.nrrd"
    assert (
        module.main([str(dicom_series_dir), "-o", str(output), "--torchscript", "--precision", "float32"]) == 0
    )  # fmt: skip
    checkpoint = tmp_path / "ct_checkpoint.nrrd"
    assert module.main([str(dicom_series_dir), "-o", str(checkpoint), "--precision", "float32"]) == 0
    np.testing.assert_allclose(read_image(output).array, read_image(checkpoint).array, atol=1)
