"""A short training run through the bundle's own config (MONAI ConfigWorkflow) on a tiny real subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BUNDLE
from monai.bundle import ConfigWorkflow

from scripts.engine import build_network, read_bundle_config


def test_train_config_runs_two_epochs_and_saves_the_best_checkpoint(tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(BUNDLE / "configs" / "train.yaml"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **{
            "output_dir": str(tmp_path / "runs"),
            "ckpt_dir": str(tmp_path / "models"),
            "max_slices_per_volume": 2,
            "patch_size": 32,
            "batch_size": 8,
            "train#trainer#max_epochs": 2,
        },
    )
    workflow.initialize()
    workflow.run()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    workflow.finalize()

    assert trainer.state.epoch == 2 and trainer.state.iteration > 0
    assert {"val_psnr", "val_ssim", "val_mse"} <= set(evaluator.state.metrics)
    assert evaluator.state.best_metric > 0
    checkpoint = tmp_path / "models" / "model.pt"
    assert checkpoint.is_file(), "CheckpointSaver keeps the best model by validation PSNR"
    _, inference = read_bundle_config(BUNDLE)
    network = build_network(inference["network_def"])
    network.load_state_dict(torch.load(checkpoint, weights_only=True))  # a plain state dict the engine can load
    assert list((tmp_path / "runs").glob("events.out.tfevents.*")), "TensorBoard logs"
    assert (tmp_path / "runs" / "validation_curve.png").stat().st_size > 1000
    assert (tmp_path / "runs" / "datalist.json").is_file()


def test_continue_config_starts_from_a_checkpoint_and_grows_identity_blocks(tmp_path):
    _, inference = read_bundle_config(BUNDLE)
    without_context = build_network({**inference["network_def"], "global_context": False})
    checkpoint = tmp_path / "start.pt"
    torch.save(without_context.state_dict(), checkpoint)
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / "train.yaml"), str(BUNDLE / "configs" / "continue.yaml")],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **{
            "init_checkpoint": str(checkpoint),
            "output_dir": str(tmp_path / "runs"),
            "ckpt_dir": str(tmp_path / "models"),
            "max_slices_per_volume": 1,
            "patch_size": 32,
            "learning_rate": 0.0,  # weights stay where the checkpoint put them
            "train#trainer#max_epochs": 1,
        },
    )
    workflow.initialize()
    workflow.run()
    trained = workflow.parser.get_parsed_content("network").state_dict()
    workflow.finalize()

    for name, weight in without_context.state_dict().items():
        if name.endswith("weight") or name.endswith("bias"):  # (BatchNorm's running statistics move in training)
            assert torch.equal(trained[name].cpu(), weight), f"{name} was not loaded from the checkpoint"
    assert trained["context.mix.weight"].abs().max() == 0, "the block the checkpoint lacks starts at zero"


def test_ssim_l1_loss_mixes_monai_ssim_and_l1_on_a_real_slice(ct_slice):
    from monai.metrics import SSIMMetric

    from scripts.training import SSIML1Loss

    clean = torch.as_tensor(ct_slice[None, None, :128, :128], dtype=torch.float32)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    l1 = torch.nn.functional.l1_loss(noisy, clean)
    ssim = SSIMMetric(spatial_dims=2, data_range=1.0)(noisy, clean).mean()
    assert SSIML1Loss()(clean, clean) == 0
    torch.testing.assert_close(SSIML1Loss(alpha=0.0)(noisy, clean), l1)
    torch.testing.assert_close(SSIML1Loss(alpha=1.0)(noisy, clean), 1 - ssim)
    torch.testing.assert_close(SSIML1Loss(alpha=0.84)(noisy, clean), 0.84 * (1 - ssim) + 0.16 * l1)
    prediction = noisy.clone().requires_grad_()
    SSIML1Loss()(prediction, clean).backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="alpha"):
        SSIML1Loss(alpha=1.5)


def test_psnr_loss_is_the_negative_mean_psnr_and_weighs_light_noise_like_heavy(ct_slice):
    from monai.metrics import PSNRMetric

    from scripts.training import PSNRLoss

    clean = torch.as_tensor(ct_slice[None, None, :128, :128], dtype=torch.float32).repeat(2, 1, 1, 1)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = (clean + torch.tensor([0.02, 0.2]).view(2, 1, 1, 1) * noise).clamp(0, 1)  # light and heavy noise
    psnr = PSNRMetric(max_val=1.0)(noisy, clean).mean()
    torch.testing.assert_close(PSNRLoss(eps=1e-12)(noisy, clean), -psnr, rtol=0, atol=1e-3)
    assert PSNRLoss()(clean, clean) == pytest.approx(-50.0)  # eps 1e-5 bounds a perfect patch at 50 dB

    # Shrinking either sample's error by 10 % gains the same: light noise counts as much as heavy noise (with MSE the
    # heavy sample would gain about 100 times more).
    def gain(loss, sample: int) -> float:
        better = noisy.clone()
        better[sample] = clean[sample] + 0.9 * (noisy[sample] - clean[sample])
        return float(loss(noisy, clean) - loss(better, clean))

    loss = PSNRLoss(eps=1e-12)
    assert gain(loss, 0) == pytest.approx(gain(loss, 1), rel=1e-3)
    assert gain(torch.nn.functional.mse_loss, 1) > 50 * gain(torch.nn.functional.mse_loss, 0)
    prediction = noisy.clone().requires_grad_()
    PSNRLoss()(prediction, clean).backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="eps"):
        PSNRLoss(eps=0)


def test_average_config_averages_from_the_loaded_weights_and_saves_them(tmp_path):
    """With continue.yaml the average starts from the checkpoint, not the network's random initialisation: at
    learning rate 0 the averaged weights are the checkpoint's; with learning, they lag behind the trained network."""
    _, inference = read_bundle_config(BUNDLE)
    start = build_network(inference["network_def"])
    checkpoint = tmp_path / "start.pt"
    torch.save(start.state_dict(), checkpoint)
    configs = [str(BUNDLE / "configs" / name) for name in ("train.yaml", "continue.yaml", "average.yaml")]
    averaged = {}
    for learning_rate in (0.0, 0.01):
        workflow = ConfigWorkflow(
            config_file=configs,
            meta_file=str(BUNDLE / "configs" / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            **{
                "init_checkpoint": str(checkpoint),
                "output_dir": str(tmp_path / "runs"),
                "ckpt_dir": str(tmp_path / f"models_{learning_rate}"),
                "max_slices_per_volume": 1,
                "patch_size": 32,
                "learning_rate": learning_rate,
                "average_momentum": 0.5,
                "train#trainer#max_epochs": 1,
            },
        )
        workflow.initialize()
        workflow.run()
        trained = {k: v.cpu() for k, v in workflow.parser.get_parsed_content("network").state_dict().items()}
        workflow.finalize()
        averaged[learning_rate] = torch.load(tmp_path / f"models_{learning_rate}" / "model_averaged.pt")
        assert averaged[learning_rate].keys() == trained.keys()
    weights = [name for name in start.state_dict() if name.endswith(("weight", "bias"))]
    for name in weights:
        assert torch.equal(averaged[0.0][name].cpu(), start.state_dict()[name]), name
    assert any(not torch.equal(averaged[0.01][name].cpu(), trained[name]) for name in weights), "an average lags"
    assert any(not torch.equal(averaged[0.01][name].cpu(), start.state_dict()[name]) for name in weights), "it moves"


def test_black_level_lift_keeps_white_and_order_and_leaves_the_input(ct_slice):
    from scripts.intensity import RandLiftBlackLevel

    lifter = RandLiftBlackLevel(prob=1.0, lifts=(0.2, 0.3))
    lifter.set_random_state(0)
    before = ct_slice.copy()
    lifted = lifter(ct_slice)
    assert np.array_equal(ct_slice, before), "the input was modified"
    assert lifted.dtype == ct_slice.dtype and lifted.shape == ct_slice.shape
    assert 0.2 <= lifter.lift <= 0.3
    assert lifted.min() == pytest.approx(lifter.lift + (1 - lifter.lift) * ct_slice.min(), abs=1e-6)
    assert lifted.max() == pytest.approx(ct_slice.max(), abs=1e-6)  # white stays where it was
    order = np.argsort(ct_slice.ravel(), kind="stable")
    assert np.all(np.diff(lifted.ravel()[order]) >= -1e-6), "the remap must keep the order of intensities"
    with pytest.raises(ValueError, match="within"):
        RandLiftBlackLevel(lifts=(0.5, 1.0))


def test_black_level_lift_dict_version_lifts_every_key_alike_with_its_probability(ct_slice):
    from scripts.intensity import RandLiftBlackLeveld

    lifter = RandLiftBlackLeveld(keys=["label", "other"], prob=0.5, lifts=(0.1, 0.4)).set_random_state(0)
    lifted = 0
    for _ in range(40):
        out = lifter({"label": ct_slice, "other": ct_slice})
        assert np.array_equal(out["label"], out["other"]), "one draw per call, the same lift for every key"
        lifted += not np.array_equal(out["label"], ct_slice)
    assert 10 <= lifted <= 30, f"{lifted} of 40 lifted at prob 0.5"
    again = RandLiftBlackLeveld(keys="label", prob=0.5).set_random_state(0)
    first = [again({"label": ct_slice})["label"].min() for _ in range(5)]
    again.set_random_state(0)
    assert first == [again({"label": ct_slice})["label"].min() for _ in range(5)], "seeded draws must repeat"


def test_autocast_inferer_trains_in_bfloat16_with_float32_outputs_and_gradients(ct_slice):
    """bfloat16 forward passes give float32 outputs close to float32's and float32 gradients for the float32 weights;
    ``float32`` is the plain forward pass, bit for bit."""
    from scripts.networks import DenoisingAutoencoder
    from scripts.training import AutocastInferer

    torch.manual_seed(0)
    network = DenoisingAutoencoder(features=(16, 32), residual=True, norm="batch", final_activation=None, unshuffle=2)
    batch = torch.as_tensor(ct_slice[None, None, :64, :64], dtype=torch.float32).repeat(4, 1, 1, 1)
    network.eval()
    with torch.inference_mode():
        plain = network(batch)
        torch.testing.assert_close(AutocastInferer("float32")(batch, network), plain, rtol=0, atol=0)
        fast = AutocastInferer("bfloat16")(batch, network)
    assert fast.dtype == torch.float32 and not torch.equal(fast, plain)
    torch.testing.assert_close(fast, plain, rtol=0, atol=0.02)
    network.train()
    AutocastInferer("bfloat16")(batch, network).square().mean().backward()
    grads = [p.grad for p in network.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_psnr_ssim_loss_prefers_kept_structure_at_equal_squared_error(ct_slice):
    """At the same MSE (so the same PSNR loss), a uniform offset keeps the CT's structure and white noise does not:
    the SSIM term ranks them; with weight 0 it is the PSNR loss."""
    from scripts.training import PSNRLoss, PSNRSSIMLoss

    clean = torch.as_tensor(ct_slice[None, None, 100:228, 100:228], dtype=torch.float32)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noise = noise / noise.square().mean().sqrt() * 0.05
    offset, noisy = clean + 0.05, clean + noise  # both 0.05 RMS from the clean image
    torch.testing.assert_close(PSNRLoss()(offset, clean), PSNRLoss()(noisy, clean))
    loss = PSNRSSIMLoss(ssim_weight=20)
    assert loss(offset, clean) < loss(noisy, clean) - 1.0  # more than 0.05 SSIM apart
    torch.testing.assert_close(PSNRSSIMLoss(ssim_weight=0)(noisy, clean), PSNRLoss()(noisy, clean))
    with pytest.raises(ValueError, match="ssim_weight"):
        PSNRSSIMLoss(ssim_weight=-1)


def test_average_checkpoints_is_the_elementwise_mean_and_refuses_other_networks(ct_slice):
    from scripts.networks import DenoisingAutoencoder
    from scripts.training import average_checkpoints

    torch.manual_seed(0)
    first, second = (DenoisingAutoencoder(residual=True, fine_blocks=1) for _ in range(2))
    average = average_checkpoints([first.state_dict(), second.state_dict()])
    for key, tensor in first.state_dict().items():
        expected = (tensor.float() + second.state_dict()[key].float()) / 2 if tensor.is_floating_point() else tensor
        assert torch.equal(average[key], expected.to(tensor.dtype)), key

    # the mean of a network with itself is the same network: the same output on a real CT slice
    soup = DenoisingAutoencoder(residual=True, fine_blocks=1)
    soup.load_state_dict(average_checkpoints([first.state_dict(), first.state_dict()]))
    image = torch.from_numpy(ct_slice[None, None]).float()
    with torch.no_grad():
        assert torch.allclose(soup.eval()(image), first.eval()(image), atol=1e-6)

    with pytest.raises(ValueError, match="another network"):
        average_checkpoints([first.state_dict(), DenoisingAutoencoder(residual=True, fine_blocks=2).state_dict()])
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([first.state_dict()])


def test_average_checkpoints_command_writes_the_soup_and_never_overwrites_an_input(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    from scripts.networks import DenoisingAutoencoder

    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for path in paths:
        torch.save(DenoisingAutoencoder().state_dict(), path)
    script = [sys.executable, str(ROOT / "scripts" / "average_checkpoints.py")]
    done = subprocess.run([*script, *map(str, paths), "-o", str(tmp_path / "soup.pt")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    soup = torch.load(tmp_path / "soup.pt", weights_only=True)
    key = next(iter(soup))
    a, b = (torch.load(path, weights_only=True)[key] for path in paths)
    assert torch.allclose(soup[key], (a + b) / 2)

    before = paths[0].read_bytes()
    refused = subprocess.run([*script, *map(str, paths), "-o", str(paths[0])], capture_output=True, text=True)
    assert refused.returncode == 2 and "one of the inputs" in refused.stderr
    assert paths[0].read_bytes() == before


def _from_scratch_workflow(tmp_path, run: str, **overrides) -> ConfigWorkflow:
    """train.yaml + train_from_scratch.yaml on the embedded images (tests run without the shared data set): a tiny
    two-epoch schedule, checkpoints in ``tmp_path / run``."""
    workflow = ConfigWorkflow(
        config_file=[str(BUNDLE / "configs" / "train.yaml"), str(BUNDLE / "configs" / "train_from_scratch.yaml")],
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=False,
        workflow_type="train",
        **{
            "split": "by-group",
            "train_sources": "$None",
            "max_target_sigma": 0.0,
            "output_dir": str(tmp_path / run),
            "max_slices_per_volume": 2,
            "patch_size": 32,
            "large_patch_size": 64,  # one per slice: the pixels of four 32x32 patches
            "batch_size": 2,  # several steps per epoch
            "val_interval": 10,  # no validation: it changes nothing that resuming must restore
            "lr_cycles": [1, 2],  # a warm restart at epoch 2
            "max_epochs": 2,
            **overrides,
        },
    )
    workflow.initialize()
    return workflow


def _state(workflow: ConfigWorkflow) -> dict:
    trainer = workflow.parser.get_parsed_content("train#trainer")
    optimizer = workflow.parser.get_parsed_content("optimizer")
    return {
        "epoch": trainer.state.epoch,
        "iteration": trainer.state.iteration,
        "lr": optimizer.param_groups[0]["lr"],
        "network": {k: v.clone() for k, v in workflow.parser.get_parsed_content("network").state_dict().items()},
        "adam": [s["exp_avg_sq"].clone() for s in optimizer.state.values()],
    }


def test_resumed_training_reaches_the_same_state_as_an_uninterrupted_run(tmp_path):
    from ignite.engine import Events

    # The loss switches at epoch 2: after the stop, so the resumed run must switch (and reset Adam) as the straight one.
    straight = _from_scratch_workflow(tmp_path, "straight", warmup_epochs=1)
    straight.run()
    expected = _state(straight)
    straight.finalize()

    stopped = _from_scratch_workflow(tmp_path, "resumed", warmup_epochs=1)
    stopped.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.EPOCH_COMPLETED(once=1), lambda engine: engine.terminate()
    )
    stopped.run()
    assert _state(stopped)["epoch"] == 1
    stopped.finalize()
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").glob("checkpoint_epoch=*.pt")] == [
        "checkpoint_epoch=1.pt"
    ]

    # resume="true": a string, as the command line passes it
    resumed = _from_scratch_workflow(tmp_path, "resumed", warmup_epochs=1, resume="true")
    resumed.run()
    state = _state(resumed)
    resumed.finalize()
    assert (state["epoch"], state["iteration"]) == (expected["epoch"], expected["iteration"]) == (2, state["iteration"])
    # The second cosine cycle (peak 0.5) restarted at epoch 2 and is half-way down after it.
    assert state["lr"] == expected["lr"] == pytest.approx(1e-3 * 0.5 * 0.5), "the schedule went on where it stopped"
    for name, weight in expected["network"].items():
        assert torch.equal(state["network"][name], weight), f"{name} differs from the uninterrupted run"
    assert all(torch.equal(a, b) for a, b in zip(state["adam"], expected["adam"], strict=True))
    # The weight average went on where it stopped, too (it joins every checkpoint).
    averages = [
        torch.load(tmp_path / run / "checkpoints" / "model_averaged.pt", weights_only=True)
        for run in ("straight", "resumed")
    ]
    assert averages[0].keys() == expected["network"].keys()
    for name, weight in averages[0].items():
        assert torch.equal(averages[1][name], weight), f"averaged {name} differs from the uninterrupted run"
    assert not all(torch.equal(averages[0][name], weight) for name, weight in expected["network"].items())
    from scripts.training import latest_checkpoint

    assert latest_checkpoint(tmp_path / "resumed" / "checkpoints").name == "checkpoint_epoch=2.pt"


def test_from_scratch_training_switches_from_l1_to_the_psnr_loss_with_fresh_adam_moments_and_larger_patches(tmp_path):
    from ignite.engine import Events

    from scripts.training import LossSwitch, PSNRLoss

    workflow = _from_scratch_workflow(tmp_path, "switch", warmup_epochs=1)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    optimizer = workflow.parser.get_parsed_content("optimizer")
    losses, steps, patches = [], [], []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: losses.append(engine.loss_function))
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda engine: patches.append((len(engine.state.output), *engine.state.output[0]["label"].shape)),
    )
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: steps.append(int(next(iter(optimizer.state.values()))["step"]))
    )
    workflow.run()
    workflow.finalize()
    assert isinstance(losses[0], torch.nn.L1Loss) and isinstance(losses[1], PSNRLoss)
    per_epoch = trainer.state.iteration // 2
    assert steps == [per_epoch, per_epoch], "Adam counts its steps afresh from the switch"
    assert patches[0] == (8, 1, 32, 32) and patches[-1] == (2, 1, 64, 64), "larger patches with the PSNR loss"
    assert trainer.state.output[0]["loss"] < 0, "the PSNR loss (negative dB) trains the second epoch"
    with pytest.raises(ValueError, match="counts from 1"):
        LossSwitch(PSNRLoss(), 0, optimizer)


def test_resume_without_a_checkpoint_says_what_to_do(tmp_path):
    from scripts.errors import BundleError
    from scripts.training import latest_checkpoint

    with pytest.raises(BundleError, match=r"nothing to resume.*without --resume"):
        latest_checkpoint(tmp_path)
    for name in ("checkpoint_epoch=9.pt", "checkpoint_epoch=10.pt", "checkpoint_epoch=x.pt", "model.pt"):
        (tmp_path / name).write_bytes(b"")
    assert latest_checkpoint(tmp_path).name == "checkpoint_epoch=10.pt", "by epoch number, not by name"
    from scripts.training import ResumableTraining

    assert not ResumableTraining(str(tmp_path), {}, resume="false").resume, "--resume false from the command line"
    assert ResumableTraining(str(tmp_path), {}, resume="True").resume
    with pytest.raises(BundleError, match="give true or false"):
        ResumableTraining(str(tmp_path), {}, resume="maybe")


def test_noise_switch_draws_the_new_noise_from_its_epoch_on_and_a_resumed_run_draws_the_same():
    from ignite.engine import Engine
    from monai.transforms import Compose

    from scripts.noise import RandNoised
    from scripts.training import EpochSeed, NoiseSwitch

    clean = {"image": np.full((1, 32, 32), 0.5, dtype=np.float32)}

    def run(start_epoch):
        pipeline = Compose([RandNoised(keys="image", noise="gaussian:factor=0.01")])
        noise = []
        engine = Engine(lambda engine, _: noise.append(pipeline(clean)["image"] - 0.5))
        EpochSeed(pipeline, seed=7).attach(engine)
        NoiseSwitch(pipeline, "gaussian:factor=0.2", epoch=2).attach(engine)
        engine.load_state_dict({"epoch": start_epoch, "epoch_length": 1, "max_epochs": 3})
        engine.run([0])
        return noise

    uninterrupted, resumed = run(0), run(2)
    assert [round(float(n.std()), 2) for n in uninterrupted] == [0.01, 0.2, 0.2]
    np.testing.assert_array_equal(resumed[-1], uninterrupted[-1])
    with pytest.raises(ValueError, match="has 0 RandNoised"):
        NoiseSwitch(Compose([]), "gaussian:factor=0.2", epoch=2)


def test_cosine_cycles_anneal_as_cosine_annealing_then_restart_at_the_next_peak():
    from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

    from scripts.training import CosineCycles

    def rates(schedule, epochs):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler, seen = schedule(optimizer), []
        for _ in range(epochs):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    cycles = rates(lambda optimizer: LambdaLR(optimizer, CosineCycles([8, 4], [1.0, 0.5])), 14)
    np.testing.assert_allclose(
        cycles[:8], rates(lambda optimizer: CosineAnnealingLR(optimizer, 8), 8), rtol=0, atol=1e-15
    )
    assert cycles[8] == pytest.approx(5e-4) and cycles[8] > cycles[9] > cycles[10] > cycles[11] > 0
    assert cycles[12:] == [0.0, 0.0]
    with pytest.raises(ValueError, match="one peak per cycle"):
        CosineCycles([8, 4], [1.0])
    with pytest.raises(ValueError, match="at least one epoch"):
        CosineCycles([0], [1.0])


def test_patch_switch_enlarges_the_training_patches_from_its_epoch_on_with_the_same_pixels_per_step():
    from ignite.engine import Engine
    from monai.transforms import Compose, RandSpatialCropSamplesd, SpatialPadd

    from scripts.training import PatchSwitch

    pad = SpatialPadd(keys="label", spatial_size=(16, 16), mode="symmetric")
    crop = RandSpatialCropSamplesd(keys="label", roi_size=(16, 16), num_samples=4, random_size=False)
    pipeline = Compose([pad, crop])
    slices = [{"label": torch.rand(1, 40, 24)}, {"label": torch.rand(1, 20, 20)}]  # the second is padded to 32
    shapes = []

    def step(engine, _):
        patches = [patch for item in slices for patch in pipeline(item)]
        shapes.append((len(patches), *patches[0]["label"].shape[1:]))

    engine = Engine(step)
    PatchSwitch(pipeline, size=32, per_slice=1, epoch=2).attach(engine)
    engine.run([0], max_epochs=3)
    assert shapes == [(8, 16, 16), (2, 32, 32), (2, 32, 32)]
    with pytest.raises(ValueError, match="counts from 1"):
        PatchSwitch(pipeline, size=32, per_slice=1, epoch=0)
    with pytest.raises(ValueError, match="has 0 SpatialPadd"):
        PatchSwitch(Compose([crop]), size=32, per_slice=1, epoch=2)
