"""The slice-wise denoising engine on real volumes: units, dtype, axes, strength, progress, 2.5D and bad bundles."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from scripts.bundle_archive import record_hashes
from scripts.engine import BUNDLE_ROOT, denoise_volume, load_bundle, resolve_precision
from scripts.errors import BundleError, CancelledError, InvalidImageError
from scripts.image_io import read_image
from scripts.intensity import IntensityWindow
from scripts.metrics import image_metrics
from scripts.noise import parse_noise
from scripts.slices import check_volume


@pytest.fixture(scope="module")
def model(shipped_model):
    return shipped_model


@pytest.fixture(scope="module")
def mni(embedded) -> np.ndarray:
    """The MNI152 T1 template (uint8, 189 x 233 x 197)."""
    return read_image(embedded["training"][0]["image"]).array


@pytest.fixture(scope="module")
def ct_crop(ct_volume_int16) -> np.ndarray:
    """6 x 96 x 112 int16 HU: a quarter of the shared real CT volume keeps each run short."""
    return ct_volume_int16[:, 48:144, 56:168]


@pytest.fixture(scope="module")
def ct_hu(embedded) -> np.ndarray:
    """The real 512 x 512 CQ500 CT slice as a 1 x 512 x 512 int16 volume in HU."""
    return read_image(embedded["test"][0]["image"]).array


def test_integer_ct_keeps_hu_scale_shape_and_dtype(model, ct_volume_int16):
    original = ct_volume_int16.copy()
    denoised = denoise_volume(ct_volume_int16, model)
    np.testing.assert_array_equal(ct_volume_int16, original)  # the input is never modified
    assert denoised.shape == original.shape and denoised.dtype == np.int16
    assert not np.array_equal(denoised, original)
    # HU in, HU out: the network's prediction, clamped to [0, 1], mapped back through the window, as a correction of
    # the original.
    window = IntensityWindow.from_data(original)
    scaled = window.forward(original[:1])
    with torch.inference_mode():
        pred = model.predict(torch.from_numpy(scaled[None])).clamp(0, 1).numpy()[0]
    expected = original[:1] + window.inverse(pred) - window.inverse(scaled)
    np.testing.assert_allclose(denoised[:1], expected, atol=0.51)  # rounded to whole HU
    assert np.median(denoised[original < -900]) < -800  # air is still air in HU
    assert np.corrcoef(denoised.ravel(), original.ravel())[0, 1] > 0.8


def test_float_output_and_float_input(model, ct_crop):
    as_float = denoise_volume(ct_crop, model, float_output=True)
    assert as_float.dtype == np.float32
    rounded = denoise_volume(ct_crop, model)
    np.testing.assert_array_equal(np.clip(np.rint(as_float), -32768, 32767).astype(np.int16), rounded)
    float64_in = denoise_volume(ct_crop.astype(np.float64), model)
    assert float64_in.dtype == np.float64
    np.testing.assert_allclose(float64_in, as_float, atol=1e-3)


@pytest.mark.parametrize("noise_spec", ["gaussian:factor=0.1,mean=0,std=1", "rician:std=0.08"])
def test_noised_volume_comes_out_with_higher_psnr(model, mni, noise_spec):
    clean = mni[88:90, 10:218, 8:188]  # 2 axial slices of real brain
    window = IntensityWindow.from_data(clean)
    noise = parse_noise(noise_spec).set_random_state(seed=0)
    noisy = window.inverse(noise(window.forward(clean)))  # float32 in native units
    denoised = denoise_volume(noisy, model, window=window)
    target = window.forward(clean)[:, None]
    before = image_metrics(window.forward(noisy)[:, None], target)["psnr"]
    after = image_metrics(window.forward(denoised)[:, None], target)["psnr"]
    assert after > before, f"{before:.2f} dB -> {after:.2f} dB"


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_each_axis_equals_slicing_a_transposed_volume(model, mni, axis):
    volume = mni[80:100, 100:124, 90:118]  # 20 x 24 x 28: every axis has its own length
    denoised = denoise_volume(volume, model, axis=axis, float_output=True)
    assert denoised.shape == volume.shape
    transposed = denoise_volume(np.moveaxis(volume, axis, 0), model, axis=0, float_output=True)
    np.testing.assert_allclose(denoised, np.moveaxis(transposed, 0, axis), atol=1e-4)
    assert not np.allclose(denoised, volume, atol=0.5)


def test_odd_slice_size_181_by_217(model, mni):
    volume = mni[4:185, 8:225, 96:99]  # slices along axis 2 are 181 x 217
    denoised = denoise_volume(volume, model, axis=2)
    assert denoised.shape == (181, 217, 3) and denoised.dtype == np.uint8
    assert np.corrcoef(denoised.ravel(), volume.ravel())[0, 1] > 0.95


def test_2d_image_in_2d_out(model, ct_hu):
    image = ct_hu[0, 100:281, 150:367]  # 181 x 217
    denoised = denoise_volume(image, model)
    assert denoised.shape == image.shape and denoised.dtype == image.dtype
    np.testing.assert_array_equal(denoised, denoise_volume(image[None], model)[0])


def test_batch_size_does_not_change_the_result(model, ct_crop):
    one = denoise_volume(ct_crop, model, batch_size=1, float_output=True)
    five = denoise_volume(ct_crop, model, batch_size=5, float_output=True)
    np.testing.assert_allclose(one, five, atol=1e-3)


def test_strength_blends_original_and_denoised(model, ct_crop):
    np.testing.assert_array_equal(denoise_volume(ct_crop, model, strength=0.0), ct_crop)
    full = denoise_volume(ct_crop, model, float_output=True)
    half = denoise_volume(ct_crop, model, strength=0.5, float_output=True)
    np.testing.assert_allclose(half, (full + ct_crop) / 2, atol=1e-2)
    with pytest.raises(InvalidImageError, match=r"strength 1\.5"):
        denoise_volume(ct_crop, model, strength=1.5)


def test_progress_is_reported_and_cancel_stops_early(model, ct_crop):
    calls = []
    denoise_volume(ct_crop, model, batch_size=4, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 6), (6, 6)]

    seen = []

    def cancel_after_first(done, total):
        seen.append(done)
        return False

    with pytest.raises(CancelledError, match="cancelled after 2 of 6 slices"):
        denoise_volume(ct_crop, model, batch_size=2, progress=cancel_after_first)
    assert seen == [2]


def test_constant_image_needs_no_division_by_zero(model):
    constant = np.full((2, 40, 48), 1000, dtype=np.int16)
    with np.errstate(all="raise"):
        denoised = denoise_volume(constant, model, float_output=True)
    assert np.isfinite(denoised).all()
    assert np.abs(denoised - 1000).max() <= 1.0  # the window spans one unit, so the correction is at most one unit


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 3, 8, 8), np.int16), "4D"),
        (np.zeros((0, 8, 8), np.int16), "empty"),
        (np.zeros((8, 8), np.complex64), "complex"),
        (np.zeros((8, 8), bool), "boolean"),
        (np.array([[0.0, np.nan], [np.inf, 1.0]], np.float32), "2 NaN/Inf voxels"),
    ],
)
def test_bad_arrays_are_named(array, message):
    with pytest.raises(InvalidImageError, match=message):
        check_volume(array)


def test_axis_must_fit(model, ct_hu):
    with pytest.raises(InvalidImageError, match="axis 3"):
        denoise_volume(ct_hu, model, axis=3)
    with pytest.raises(InvalidImageError, match="axis 1 does not fit a 2D image"):
        denoise_volume(ct_hu[0], model, axis=1)


def copy_bundle(tmp_path, network_def: dict | None = None, channels: int | None = None):
    """A copy of the shipped bundle's configs and weights with a changed network_def and/or input channel count."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE_ROOT / "configs", folder / "configs")
    shutil.copytree(BUNDLE_ROOT / "models", folder / "models", ignore=shutil.ignore_patterns("*.ts"))
    shutil.copy(BUNDLE_ROOT / "large_files.yml", folder)
    if network_def is not None:
        config = yaml.safe_load((folder / "configs" / "inference.json").read_text())
        config["network_def"] = network_def
        (folder / "configs" / "inference.json").write_text(json.dumps(config))
    if channels is not None:
        metadata = json.loads((folder / "configs" / "metadata.json").read_text())
        metadata["network_data_format"]["inputs"]["image"]["num_channels"] = channels
        (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_weights_that_do_not_fit_network_def_are_refused(tmp_path):
    bundle = copy_bundle(tmp_path, {"_target_": "scripts.networks.DenoisingAutoencoder", "features": [32, 32, 32]})
    with pytest.raises(BundleError, match="do not fit network_def"):
        load_bundle(bundle, device="cpu")


def test_metadata_channels_must_match_network(tmp_path):
    with pytest.raises(BundleError, match="takes 1 input channels but the metadata says 3"):
        load_bundle(copy_bundle(tmp_path, channels=3), device="cpu")


def test_metadata_blind_spot_must_be_true_or_false(tmp_path):
    bundle = copy_bundle(tmp_path)
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    (bundle / "configs" / "metadata.json").write_text(json.dumps({**metadata, "blind_spot": "yes"}))
    with pytest.raises(BundleError, match="blind_spot is 'yes'; it must be true or false"):
        load_bundle(bundle, device="cpu")


def test_untrusted_network_targets_are_refused(tmp_path):
    with pytest.raises(BundleError, match="allowed are"):
        load_bundle(copy_bundle(tmp_path, {"_target_": "os.system", "command": "true"}), device="cpu")


def test_2_5d_bundle_feeds_neighbouring_slices(tmp_path, ct_volume_int16):
    network_def = {"_target_": "scripts.networks.DenoisingAutoencoder", "in_channels": 3, "features": [8, 8]}
    bundle = copy_bundle(tmp_path, network_def, channels=3)
    torch.manual_seed(0)
    from scripts.engine import build_network

    torch.save(build_network(network_def).state_dict(), bundle / "models" / "model.pt")
    record_hashes(bundle)
    model = load_bundle(bundle, device="cpu")
    assert model.context == 1
    window = IntensityWindow.from_data(ct_volume_int16)
    denoised = denoise_volume(ct_volume_int16, model, window=window, float_output=True)
    # The first slice sees (slice 0, slice 0, slice 1): the edge slice repeats.
    stack = window.forward(ct_volume_int16[[0, 0, 1]])[None]
    with torch.inference_mode():
        pred = model.network(torch.from_numpy(stack)).numpy()[0, 0]
    expected = ct_volume_int16[0] + window.inverse(pred) - window.inverse(stack[0, 1])
    np.testing.assert_allclose(denoised[0], expected, atol=1e-2)


@pytest.mark.slow
def test_self_ensemble_is_rotation_equivariant_and_denoises_better(model, mni):
    from scripts.engine import predict_self_ensemble

    clean = mni[88:89, 10:218, 8:188]  # one axial slice of real brain, 208 x 180 (not square)
    window = IntensityWindow.from_data(clean)
    noise = parse_noise("gaussian:factor=0.1,mean=0,std=1").set_random_state(seed=0)
    noisy = window.forward(window.inverse(noise(window.forward(clean))))
    batch = torch.from_numpy(noisy[None]).float()
    with torch.inference_mode():
        ensemble = predict_self_ensemble(model.network, batch)
        turned = predict_self_ensemble(model.network, torch.rot90(batch, 1, dims=(-2, -1)))
        mirrored = predict_self_ensemble(model.network, batch.flip(-1))
    assert ensemble.shape == batch.shape
    torch.testing.assert_close(turned, torch.rot90(ensemble, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(mirrored, ensemble.flip(-1), atol=1e-5, rtol=0)

    target = window.forward(clean)[:, None]
    plain = denoise_volume(noisy, model, window=IntensityWindow(0.0, 1.0), float_output=True)
    averaged = denoise_volume(noisy, model, window=IntensityWindow(0.0, 1.0), float_output=True, views=8)
    psnr = {name: image_metrics(out[:, None], target)["psnr"] for name, out in [("plain", plain), ("avg", averaged)]}
    assert psnr["avg"] > psnr["plain"] > image_metrics(noisy[:, None], target)["psnr"], psnr
    two = denoise_volume(noisy, model, window=IntensityWindow(0.0, 1.0), float_output=True, views=2)
    mirrored_two = denoise_volume(noisy[..., ::-1].copy(), model, window=IntensityWindow(0.0, 1.0), views=2)
    np.testing.assert_allclose(mirrored_two[..., ::-1], two, atol=1e-5)
    with pytest.raises(InvalidImageError, match=r"views must be one of \(1, 2, 4, 8\)"):
        denoise_volume(noisy, model, views=3)


@pytest.mark.slow
def test_bfloat16_denoises_as_well_as_float32(ct_hu):
    """bfloat16 convolutions (the engine's choice on CPUs that have them natively) change the result by far less than
    they remove. The tolerance is what bfloat16 may cost a user, not one CPU's rounding: at most 1 % of the PSNR that
    float32 gains over the noisy slice (0.11 dB here; measured 0.04-0.05 dB, the kernels differ between CPUs with and
    without AMX), and an output change under 5 % of what the network removes (measured 2 %). Output stays float32."""
    noise = parse_noise("gaussian:factor=0.07,mean=0,std=1")
    noise.set_random_state(seed=0)
    window = IntensityWindow.from_data(ct_hu)
    clean = window.forward(ct_hu)[0]
    noisy = noise(clean[None])[0]
    denoised = {}
    for precision in ("float32", "bfloat16"):
        model = load_bundle(device="cpu", precision=precision)
        assert model.precision == getattr(torch, precision)
        with torch.inference_mode():
            assert model.predict(torch.from_numpy(noisy[None, None, :64, :64])).dtype == torch.float32
        denoised[precision] = denoise_volume(noisy, model, IntensityWindow(0.0, 1.0), float_output=True)
    psnr = {precision: image_metrics(image, clean)["psnr"] for precision, image in denoised.items()}
    gain = psnr["float32"] - image_metrics(noisy, clean)["psnr"]
    assert gain > 5
    assert psnr["bfloat16"] >= psnr["float32"] - 0.01 * gain
    removed = np.abs(noisy - denoised["float32"]).mean()
    assert np.abs(denoised["bfloat16"] - denoised["float32"]).mean() < 0.05 * removed


def test_precision_is_float32_off_cpu_and_for_direct_output_and_unknown_names_are_refused():
    from scripts.networks import DenoisingAutoencoder

    residual, direct = DenoisingAutoencoder(residual=True), DenoisingAutoencoder(residual=False)
    assert resolve_precision("auto", torch.device("cuda"), residual) == torch.float32
    assert resolve_precision("auto", torch.device("cpu"), direct) == torch.float32  # would round the image itself
    assert resolve_precision("float32", torch.device("cpu")) == torch.float32
    assert resolve_precision("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(BundleError, match="precision must be one of"):
        resolve_precision("float16", torch.device("cpu"))
