"""Blind-spot masking and loss, the noisy-only training config, and adapting a model to one noisy scan."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import BUNDLE, ROOT

from scripts.data import center_crop, load_slices
from scripts.engine import LoadedModel, denoise_volume
from scripts.errors import CancelledError
from scripts.intensity import IntensityWindow
from scripts.metrics import image_metrics
from scripts.networks import DenoisingAutoencoder
from scripts.noise import parse_noise
from scripts.selfsupervised import (
    CORRELATED_RESIDUAL,
    BlindSpotLoss,
    BlindSpotMask,
    BlindSpotMaskd,
    SureInferer,
    SureLoss,
    adapt_model,
    noisy_only,
)

BUNDLE_CONFIGS, RESEARCH_CONFIGS = BUNDLE / "configs", ROOT / "research" / "configs"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared, busy CPU, threads that wait for each other make every step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def noisy_ct(ct_slice):
    """A 128x128 crop of a real CT slice and its Gaussian-noised version (sigma 0.1), both [0, 1] float32."""
    clean = center_crop(ct_slice, 128)
    noise = parse_noise("gaussian:factor=0.1,mean=0,std=1")
    noise.set_random_state(seed=0)
    return clean, noise(clean)


def test_masking_replaces_hidden_pixels_by_visible_neighbours(ct_slice):
    image = ct_slice[None]
    masking = BlindSpotMask(ratio=0.05, radius=2).set_random_state(seed=1)
    masked, mask = masking(image)
    rows, cols, source_rows, source_cols = masking.rows, masking.cols, masking.source_rows, masking.source_cols
    hidden = mask[0] > 0
    assert abs(hidden.mean() - 0.05) < 0.001
    assert hidden[rows, cols].all() and hidden.sum() == len(rows)
    assert ((rows != source_rows) | (cols != source_cols)).all()  # never the pixel itself...
    assert not hidden[source_rows, source_cols].any()  # ...nor another hidden pixel
    assert (np.abs(rows - source_rows) <= 2).all() and (np.abs(cols - source_cols) <= 2).all()
    np.testing.assert_array_equal(masked[0, rows, cols], image[0, source_rows, source_cols])
    np.testing.assert_array_equal(masked[0][~hidden], image[0][~hidden])
    assert masked is not image and not np.shares_memory(masked, image)
    np.testing.assert_array_equal(image, ct_slice[None])  # the input is unchanged


def test_structured_masking_hides_whole_blocks_and_learns_from_their_centres(ct_slice):
    image = ct_slice[None]
    masking = BlindSpotMask(ratio=0.004, radius=5, span=3).set_random_state(seed=1)
    masked, mask = masking(image)
    replaced = np.zeros(ct_slice.shape, dtype=bool)
    replaced[masking.rows, masking.cols] = True
    targets = mask[0] > 0
    assert targets.sum() > 0.003 * targets.size and targets.sum() == len(masking.target_rows)
    for row, col in zip(masking.target_rows, masking.target_cols, strict=True):  # each learnt pixel's 7x7 block...
        assert replaced[max(0, row - 3) : row + 4, max(0, col - 3) : col + 4].all()
    assert not replaced[masking.source_rows, masking.source_cols].any()  # ...comes from outside every block
    assert (np.abs(masking.rows - masking.source_rows) <= 5).all() and (
        np.abs(masking.cols - masking.source_cols) <= 5
    ).all()
    np.testing.assert_array_equal(
        masked[0, masking.rows, masking.cols], image[0, masking.source_rows, masking.source_cols]
    )
    np.testing.assert_array_equal(masked[0][~replaced], image[0][~replaced])
    with pytest.raises(ValueError, match="span"):
        BlindSpotMask(radius=2, span=2)


def test_network_output_does_not_depend_on_hidden_pixels(ct_slice):
    """d output / d input is exactly zero at every hidden pixel: its value never reaches the network."""
    torch.manual_seed(0)
    network = DenoisingAutoencoder(in_channels=3, features=(16, 16))
    volume = torch.tensor(np.stack([center_crop(ct_slice, 64)] * 3), requires_grad=True)  # 2.5D: 3 slices
    masked, mask = BlindSpotMask(ratio=0.05).set_random_state(seed=2)(volume)
    network(masked[None]).sum().backward()
    hidden = mask[0] > 0
    assert hidden.sum() > 100
    assert (volume.grad[1][hidden] == 0).all()  # the centre channel's hidden pixels
    assert (volume.grad[1][~hidden] != 0).float().mean() > 0.9  # everything else does reach the output


def test_dictionary_masking_and_loss_count_hidden_pixels_only(noisy_ct):
    _, noisy = noisy_ct
    item = BlindSpotMaskd("image", ratio=0.03).set_random_state(seed=3)({"image": noisy[None], "modality": "CT"})
    assert item["label"].shape == (2, 128, 128) and item["modality"] == "CT"
    np.testing.assert_array_equal(item["label"][0], noisy)
    target = torch.from_numpy(item["label"])[None]
    hidden = target[:, 1:] > 0
    pred = torch.rand(1, 1, 128, 128, generator=torch.Generator().manual_seed(0))
    loss = BlindSpotLoss()(pred, target)
    expected = ((pred - target[:, :1])[hidden] ** 2).mean()
    assert torch.isclose(loss, expected)
    assert torch.isclose(BlindSpotLoss()(torch.where(hidden, pred, 0.0), target), loss)  # visible pixels do not count


def test_loss_margin_leaves_out_pixels_predicted_near_the_clipping_bounds():
    noisy = torch.full((1, 1, 4, 4), 0.5)
    target = torch.cat([noisy, torch.ones_like(noisy)], dim=1)  # every pixel learnt from
    pred = torch.full((1, 1, 4, 4), 0.6, requires_grad=True)
    with torch.no_grad():
        pred[..., 0, :] = 0.97  # a row predicted near the top of the range, wrongly: the loss must not see it
    loss = BlindSpotLoss(margin=0.05)(pred, target)
    assert torch.isclose(loss, torch.tensor(0.01))
    loss.backward()
    assert (pred.grad[..., 0, :] == 0).all() and (pred.grad[..., 1:, :] != 0).all()
    assert torch.isclose(BlindSpotLoss()(pred, target), torch.tensor((4 * 0.47**2 + 12 * 0.01) / 16))


class CleanSlice:
    """A clean slice that may be read once (to noise it); any later use of it fails the test."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.reads = 0

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        self.reads += 1
        if self.reads > 1:
            raise AssertionError("the clean image was read again after it was noised")
        return self._array

    def __getattr__(self, name: str):
        if name.startswith("__"):  # NumPy probes __array_interface__ etc. before falling back to __array__
            raise AttributeError(name)
        raise AssertionError(f"the clean image was used ({name}) outside the noising step")


@pytest.mark.parametrize(
    ("objective", "metric", "checkpoint_name"),
    [
        ([], "val_blind_spot_loss", "model_selfsupervised.pt"),
        # the objectives that lost, run from research/ against the bundle
        ([RESEARCH_CONFIGS / "recorrupted.yaml"], "val_recorrupted_loss", "model_recorrupted.pt"),
        # from the shipped blind-spot model
        ([BUNDLE_CONFIGS / "continue.yaml", RESEARCH_CONFIGS / "sure.yaml"], "val_sure_loss", "model_sure.pt"),
        ([RESEARCH_CONFIGS / "blind_spot_network.yaml"], "val_blind_spot_loss", "model_blind_spot_network.pt"),
    ],
    ids=["blind-spot", "recorrupted", "sure", "blind-spot-network"],
)
def test_selfsupervised_config_never_reads_a_clean_image(embedded, tmp_path, objective, metric, checkpoint_name):
    from monai.bundle import ConfigParser

    slices = load_slices(embedded["validation"], progress=False)  # real 128x128 CT and 64x64 MR slices
    tripwires = {"train": [], "validate": []}
    parser = ConfigParser()
    configs = [BUNDLE_CONFIGS / "train.yaml", BUNDLE_CONFIGS / "train_selfsupervised.yaml", *objective]
    parser.read_config([str(path) for path in configs])
    for section, wires in tripwires.items():
        wires.extend(CleanSlice(item["label"]) for item in slices)
        parser[f"{section}#slices"] = [{**item, "label": wire} for item, wire in zip(slices, wires, strict=True)]
    parser.update({"ckpt_dir": str(tmp_path), "output_dir": str(tmp_path), "batch_size": 4, "patch_size": 32})
    if BUNDLE_CONFIGS / "continue.yaml" in objective:
        parser.update({"init_checkpoint": str(BUNDLE / "models" / "model_selfsupervised.pt"), "learning_rate": 1e-4})
    parser["train#trainer#max_epochs"] = 6
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    evaluator.run()  # the untrained network's self-supervised loss
    untrained = evaluator.state.metrics[metric]
    trainer.run()
    assert all(wire.reads == 1 for wires in tripwires.values() for wire in wires)
    assert np.isfinite(float(trainer.state.output[0]["loss"]))
    assert evaluator.state.metrics[metric] < untrained, "noisy images alone taught it something"
    checkpoint = tmp_path / checkpoint_name
    parser.get_parsed_content("network_def", lazy=False).load_state_dict(torch.load(checkpoint, weights_only=True))


def test_noisy_only_drops_the_clean_image(noisy_ct):
    clean, _ = noisy_ct
    [item] = noisy_only([{"label": clean[None], "group": "g"}], "gaussian:factor=0.1", seed=0)
    assert set(item) == {"image", "group", "noise", "sigma"}
    assert item["image"].shape == (1, 128, 128) and not np.array_equal(item["image"][0], clean)
    assert item["sigma"] == pytest.approx(0.1, rel=0.15)  # estimated from the noisy image alone


def _fresh_model() -> LoadedModel:
    """A small untrained Gondara-style DAE: whatever it denoises after adaptation, it learnt from the noisy image."""
    torch.manual_seed(0)
    return LoadedModel(DenoisingAutoencoder(features=(16, 16)).eval(), torch.device("cpu"))


def test_adaptation_learns_to_denoise_a_real_noisy_image(ct_slice):
    clean = center_crop(ct_slice, 128)
    noise = parse_noise("gaussian:factor=0.2,mean=0,std=1")
    noise.set_random_state(seed=0)
    noisy = noise(clean)
    window = IntensityWindow(0.0, 1.0)
    model = _fresh_model()
    before = denoise_volume(noisy, model, window, float_output=True)
    # a step budget, not a time budget, so the result does not depend on how busy the machine is; the noise is white
    # (span 0) and an untrained network's predictions tell nothing about clipping (margin 0)
    adapted = adapt_model(
        model, noisy, window, seconds=600, patch_size=32, learning_rate=3e-3, ratio=0.05, span=0, margin=0, max_steps=50
    )
    assert adapted.metadata["adaptation"]["steps"] == 50
    after = denoise_volume(noisy, adapted, window, float_output=True)
    noisy_psnr, adapted_psnr = image_metrics(noisy, clean)["psnr"], image_metrics(after, clean)["psnr"]
    assert adapted_psnr > noisy_psnr + 5.0, (noisy_psnr, adapted_psnr)
    np.testing.assert_array_equal(denoise_volume(noisy, model, window, float_output=True), before)  # a copy learnt


def test_adaptation_stops_at_its_time_bound(noisy_ct):
    _, noisy = noisy_ct
    calls = []
    start = time.monotonic()
    adapted = adapt_model(_fresh_model(), noisy, seconds=2.0, progress=lambda done, total: calls.append(done))
    wall = time.monotonic() - start
    record = adapted.metadata["adaptation"]
    assert record["seconds"] >= 2.0 and record["steps"] == len(calls) >= 1
    assert wall <= 2.0 + record["slowest_step"] + 1.0  # stops after the step that crosses the bound
    assert calls == sorted(calls) and calls[-1] == 2000


def test_adaptation_can_be_cancelled_and_leaves_the_model_unchanged(noisy_ct, shipped_model):
    _, noisy = noisy_ct
    model = shipped_model
    weights = {name: value.clone() for name, value in model.network.state_dict().items()}
    calls = []
    with pytest.raises(CancelledError, match="cancelled"):
        adapt_model(model, noisy, seconds=60, progress=lambda done, total: calls.append(done) or len(calls) < 3)
    assert len(calls) == 3
    assert all(torch.equal(weights[name], value) for name, value in model.network.state_dict().items())


def test_denoise_cli_adapts_and_reports_the_noise_level(embedded, tmp_path, capsys):
    """``scripts/denoise.py --adapt`` on a real MR volume crop with added noise: one summary line with both."""
    import importlib.util

    from conftest import ROOT

    from scripts.image_io import Volume, read_image, write_image

    mni = read_image(embedded["training"][0]["image"])
    crop = Volume.from_sitk(mni.to_sitk()[80:144, 90:154, 90:96])  # 6 slices of 64 x 64
    window = IntensityWindow.from_data(crop.array)
    noisy = window.inverse(parse_noise("gaussian:factor=0.1").set_random_state(seed=0)(window.forward(crop.array)))
    source = write_image(tmp_path / "noisy.nii.gz", noisy, like=crop)
    before = source.read_bytes()
    spec = importlib.util.spec_from_file_location("denoise_cli", ROOT / "scripts" / "denoise.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    output = tmp_path / "denoised.nii.gz"
    assert cli.main([str(source), "-o", str(output), "--device", "cpu", "--adapt", "--adapt-seconds", "2"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "adapted 2 s each" in summary and "noise sigma" in summary, summary
    sigma_scaled = float(summary.split("(")[-1].split(" of the window")[0])
    expected = 0.1 * window.width / IntensityWindow.from_data(noisy).width  # the noisy input's own window is wider
    assert sigma_scaled == pytest.approx(expected, rel=0.1)
    assert read_image(output).array.shape == crop.array.shape and source.read_bytes() == before


@pytest.mark.slow
def test_slicer_worker_adapts_with_progress_in_seconds_and_can_be_cancelled(embedded, tmp_path, capsys):
    """The Slicer module's worker: the noise level in its result, adaptation progress in seconds (run in this process),
    and Cancel during adaptation kills the worker process with nothing written."""
    import json
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "MedDenoise"))
    from MedDenoiseLib import JobCancelledError, WorkerJob, worker, worker_command, write_volume_file

    from scripts.image_io import read_image

    mni = read_image(embedded["training"][0]["image"])
    source = write_volume_file(tmp_path / "mni.nrrd", np.ascontiguousarray(mni.array[90:94, 60:124, 60:124]), np.eye(4))
    command = worker_command(sys.executable, BUNDLE, "denoise", input=source, output=tmp_path / "adapted.nrrd",
                             device="cpu", adapt_seconds=2)  # fmt: skip
    assert worker.main(command[2:]) == 0
    lines = capsys.readouterr().out.splitlines()
    seen = [json.loads(line[len(worker.PREFIX) :]) for line in lines if line.startswith(worker.PREFIX)]
    seconds = [e for e in seen if e["event"] == "progress" and e.get("unit") == "s"]
    assert seconds and seconds[-1]["done"] == seconds[-1]["total"] == 2
    assert "noise sigma" in seen[-1]["noise"] and seen[-1]["adapted_seconds"] >= 2
    noise = seen[-1]["noise"].removesuffix("; adapting did not help, kept the model as it was")  # adapt_model's check
    assert noise.endswith(("; correlated over pixels", "; independent from pixel to pixel")), seen[-1]["noise"]
    assert read_image(tmp_path / "adapted.nrrd").array.shape == (4, 64, 64)

    running = WorkerJob(worker_command(sys.executable, BUNDLE, "denoise", input=source,
                                       output=tmp_path / "cancelled.nrrd", device="cpu", adapt_seconds=600))  # fmt: skip
    while running.progressUnit != "s":  # wait until it is adapting, then cancel
        running.poll(timeout=0.1)
        assert not running.finished, f"the worker ended before the test could cancel it: {list(running.log)}"
    running.cancel()
    with pytest.raises(JobCancelledError):
        running.wait()
    assert not (tmp_path / "cancelled.nrrd").exists()


@pytest.mark.slow
def test_adaptation_to_correlated_noise_hides_blocks_and_beats_the_shipped_model(ct_slice, shipped_model):
    """The shipped model's residual tells white noise (single-pixel blind spot) from noise correlated over pixels, as
    a CT reconstruction kernel leaves it (blocks); on the latter a short adaptation improves on the shipped model."""
    clean = center_crop(ct_slice, 128)
    window = IntensityWindow(0.0, 1.0)
    model = shipped_model
    white = parse_noise("gaussian:factor=0.1,mean=0,std=1").set_random_state(seed=0)(clean)
    assert adapt_model(model, white, window, max_steps=1).metadata["adaptation"]["span"] == 0
    noisy = parse_noise("correlated:std=0.1,width=1").set_random_state(seed=0)(clean)
    adapted = adapt_model(model, noisy, window, seconds=600, max_steps=100)
    record = adapted.metadata["adaptation"]
    # the residual alone sees the correlation (0.8.0: above 0.3, 0.9.0: 0.28), without the scale ratio's help
    assert record["span"] == 3 and record["residual_correlation"] > CORRELATED_RESIDUAL
    assert record["kept"] == "adapted" and record["adapted_risk"] < record["given_risk"], record  # the scan shows it
    shipped_psnr = image_metrics(denoise_volume(noisy, model, window, float_output=True), clean)["psnr"]
    adapted_psnr = image_metrics(denoise_volume(noisy, adapted, window, float_output=True), clean)["psnr"]
    assert adapted_psnr > shipped_psnr + 2.0, (shipped_psnr, adapted_psnr)  # measured: 21.6 -> 30.5 dB


def test_adaptation_hides_blocks_when_only_the_scale_ratio_sees_correlated_noise(ct_slice, monkeypatch, shipped_model):
    """A model can remove so much of correlated noise that its residual looks white (0.7.0 on a radiograph: 0.13);
    the model-free wavelet scale ratio still chooses blocks then, and alone it does not choose them for white noise."""
    import scripts.selfsupervised as selfsupervised

    monkeypatch.setattr(selfsupervised, "residual_correlation", lambda noisy, prediction: 0.0)
    clean = center_crop(ct_slice, 128)
    window = IntensityWindow(0.0, 1.0)
    model = shipped_model
    for spec, span in (("correlated:std=0.1,width=1", 3), ("gaussian:factor=0.1,mean=0,std=1", 0)):
        noisy = parse_noise(spec).set_random_state(seed=0)(clean)
        record = adapt_model(model, noisy, window, max_steps=1).metadata["adaptation"]
        assert record["residual_correlation"] == 0.0 and record["span"] == span, (spec, record)
        assert (record["noise_scale_ratio"] > selfsupervised.CORRELATED_SCALE_RATIO) == (span == 3), record


def test_posterior_loss_is_lowest_at_the_hidden_values_mean_and_their_variance_less_the_noise():
    """Hidden noisy values y = x + s*z1 + sigma*z2 (a clean value of spread s, noise sigma): the loss is smallest for
    the mean of y and the log prior variance log(var(y) - sigma^2) = log(s^2), and the 2-channel shape is checked."""
    from scripts.selfsupervised import BlindSpotPosteriorLoss

    generator = torch.Generator().manual_seed(0)
    s, sigma = 0.05, 0.1
    noisy = (
        0.4
        + s * torch.randn(1, 1, 64, 64, generator=generator)
        + sigma * torch.randn(1, 1, 64, 64, generator=generator)
    )
    target = torch.cat([noisy, torch.ones_like(noisy), torch.full_like(noisy, sigma)], dim=1)
    loss = BlindSpotPosteriorLoss()

    def at(mean: float, log_prior: float) -> float:
        return float(loss(torch.cat([torch.full_like(noisy, mean), torch.full_like(noisy, log_prior)], dim=1), target))

    best_mean, best_log = float(noisy.mean()), float(np.log(noisy.var() - sigma**2))
    assert best_log == pytest.approx(2 * np.log(s), abs=0.15)
    for step in (0.02, -0.02):
        assert at(best_mean, best_log) < at(best_mean + step, best_log)
    for step in (0.5, -0.5):
        assert at(best_mean, best_log) < at(best_mean, best_log + step)
    with pytest.raises(ValueError, match="2-channel"):
        loss(noisy, target)
    # Every pixel a target (no mask channel: an architectural blind spot) scores as the all-ones mask.
    pred = torch.cat([torch.full_like(noisy, best_mean), torch.full_like(noisy, best_log)], dim=1)
    assert torch.isclose(loss(pred, target[:, [0, 2]]), loss(pred, target))


def _gaussian_blur(sigma_px: float) -> torch.nn.Conv2d:
    """A fixed 7x7 Gaussian blur as a network: linear, so its divergence is known (its centre weight per pixel)."""
    grid = torch.arange(-3, 4, dtype=torch.float32)
    kernel = torch.exp(-(grid[:, None] ** 2 + grid[None] ** 2) / (2 * sigma_px**2))
    blur = torch.nn.Conv2d(1, 1, 7, padding=3, padding_mode="reflect", bias=False)
    blur.weight.data = (kernel / kernel.sum())[None, None]
    return blur.requires_grad_(False)


@pytest.mark.parametrize("sigma_px", [0.7, 1.5])
def test_sure_loss_estimates_the_clean_error_without_the_clean_image(ct_slice, sigma_px):
    """On a real CT crop with Gaussian noise, SURE (from the noisy image and sigma only) matches the blur's true
    squared error to the clean image, divided by the noise variance, within 0.03; the noisy input's own term alone
    (no divergence) would be off by about twice the blur's centre weight."""
    clean = torch.from_numpy(0.25 + 0.5 * center_crop(ct_slice, 128))[None, None]  # away from 0 and 1: no clipping
    sigma, blur, torch_rng = 0.05, _gaussian_blur(sigma_px), torch.manual_seed(0)
    noisy = clean + sigma * torch.randn((16, 1, 128, 128), generator=torch_rng)
    targets = torch.stack([torch.cat([image, torch.full_like(image, sigma)]) for image in noisy])
    estimate = SureLoss()(SureInferer()(noisy, blur), targets).item()
    true = (((blur(noisy) - clean) ** 2).flatten(1).mean(1) / sigma**2).mean().item()
    centre_weight = blur.weight[0, 0, 3, 3].item()
    assert estimate == pytest.approx(true, abs=0.03)
    assert abs(estimate - true) < 0.1 * 2 * centre_weight


def test_sure_inferer_returns_the_output_and_its_divergence():
    """Channel 0 is the network's output; channel 1 averages to the divergence per pixel: 1 for the identity, 0 for a
    constant, ``c`` for a scaling by ``c``."""
    torch.manual_seed(0)
    image = torch.rand(8, 1, 64, 64)
    for network, divergence in ((torch.nn.Identity(), 1.0), (lambda x: 0.3 * x, 0.3), (lambda x: 0 * x + 0.5, 0.0)):
        out = SureInferer()(image, network)
        assert out.shape == (8, 2, 64, 64)
        torch.testing.assert_close(out[:, :1], network(image))
        assert out[:, 1].mean().item() == pytest.approx(divergence, abs=0.03)


def test_sure_margin_leaves_out_the_clipped_background(ct_slice):
    """On a real CT slice whose air is black, noise clipped at 0 biases SURE: the plain estimate is 0.19 below the
    blur's true error (measured); with a margin of 3 sigmas it matches the true error on the pixels it keeps within
    0.04 (measured 0.025: choosing pixels by the output keeps a little bias)."""
    clean = torch.from_numpy(ct_slice)[None, None]
    sigma, blur, torch_rng = 0.05, _gaussian_blur(1.5), torch.manual_seed(0)
    noisy = (clean + sigma * torch.randn((4, 1, *ct_slice.shape), generator=torch_rng)).clamp(0.0, 1.0)
    targets = torch.cat([noisy, torch.full_like(noisy, sigma)], dim=1)
    output = SureInferer()(noisy, blur)
    squared = ((output[:, :1] - clean) ** 2 / sigma**2).flatten(1)
    kept = ((output[:, 0] > 3 * sigma) & (output[:, 0] < 1 - 3 * sigma)).flatten(1).float()
    assert 0.2 < kept.mean() < 0.9  # both air and tissue
    true_kept = ((kept * squared).sum(1) / kept.sum(1)).mean().item()
    assert SureLoss(margin_sigmas=3.0)(output, targets).item() == pytest.approx(true_kept, abs=0.04)
    assert abs(SureLoss()(output, targets).item() - squared.mean().item()) > 0.1
    with pytest.raises(ValueError, match="at least 0"):
        SureLoss(margin_sigmas=-1.0)
