"""Training helpers used by the bundle's configs."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.inferers import Inferer
from monai.losses import SSIMLoss
from monai.transforms import Compose, RandSpatialCropSamplesd, SpatialPadd
from torch import nn

from .atomic import write_atomic
from .engine import resolve_precision
from .errors import BundleError
from .noise import Noise, RandNoised, parse_noise


class SSIML1Loss(nn.Module):
    """``alpha * (1 - SSIM) + (1 - alpha) * L1``, the mix Zhao et al. (2017) found to restore images better, on PSNR
    and SSIM alike, than L2 or L1 alone (their alpha: 0.84).

    SSIM (MONAI's, 11x11 Gaussian window) rewards smooth flat regions and kept structure, where a blind denoiser trained
    with L1 alone leaves blotches; L1 keeps the intensities (SSIM alone ignores small offsets).

    Shapes: prediction and target ``(B, 1, H, W)`` in [0, 1], H and W >= 11; returns a scalar.
    """

    def __init__(self, alpha: float = 0.84) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], not {alpha}")
        self.alpha = alpha
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1 = torch.nn.functional.l1_loss(prediction, target)
        return self.alpha * self.ssim(prediction, target) + (1.0 - self.alpha) * l1


class PSNRLoss(nn.Module):
    """Negative mean PSNR of the samples in a batch: ``mean_b 10 log10(MSE_b + eps)`` (data range 1), the loss of
    NAFNet (Chen et al. 2022) for denoising.

    Its gradient is each sample's squared-error gradient divided by that sample's MSE, so a patch with light noise
    (small errors) weighs as much as one with heavy noise, as in the benchmark, which averages PSNR per image and
    setting; MSE and L1 leave the light-noise patches, where BM3D is strongest, a small share of the gradient.
    ``eps`` (1e-5: 50 dB) keeps a flat black patch that the network already returns exactly from taking over.

    Shapes: prediction and target ``(B, C, H, W)`` in [0, 1]; returns a scalar (lower is better, in dB).
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be positive (it bounds the PSNR of a perfect patch), not {eps}")
        self.eps = eps

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = ((prediction - target) ** 2).flatten(1).mean(dim=1)
        return 10.0 * torch.log10(mse + self.eps).mean()


class PSNRSSIMLoss(PSNRLoss):
    """:class:`PSNRLoss` plus ``ssim_weight * (1 - SSIM)``: the PSNR loss in dB with each 0.01 of mean SSIM worth
    ``ssim_weight / 100`` dB.

    The PSNR-optimal estimate at heavy noise is smoother than BM3D's and scores a lower SSIM at a higher PSNR (bundle
    0.9.1: +2.9 dB and -0.07 SSIM at 0.5*N(0,1)); the SSIM term (MONAI's, 11x11 Gaussian window) buys back kept
    structure where PSNR has margin to give.

    Shapes: prediction and target ``(B, 1, H, W)`` in [0, 1], H and W >= 11; returns a scalar (lower is better).
    """

    def __init__(self, ssim_weight: float = 20.0, eps: float = 1e-5) -> None:
        super().__init__(eps)
        if ssim_weight < 0:
            raise ValueError(f"ssim_weight must be >= 0 (dB per unit of SSIM), not {ssim_weight}")
        self.ssim_weight = ssim_weight
        self.ssim = SSIMLoss(spatial_dims=2, data_range=1.0)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(prediction, target) + self.ssim_weight * self.ssim(prediction, target)


class AutocastInferer(Inferer):
    """The network's forward pass under ``torch.autocast`` in the precision :func:`scripts.engine.resolve_precision`
    picks (``"auto"``: bfloat16 for a residual network on a CPU with native bfloat16), output as float32, so the loss
    and the weights' updates stay float32; for ``SupervisedTrainer`` (MONAI's ``amp`` is for CUDA only).

    Why: a training step of the shipped network (16 patches of 128²) takes 0.37-0.41 s in bfloat16 against 0.72-0.74 s
    in float32 on this project's CPU, twice the steps for a given time (``research/experiments.md``, session 10).
    """

    def __init__(self, precision: str = "auto") -> None:
        super().__init__()
        self.precision = precision

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        dtype = resolve_precision(self.precision, inputs.device, network)
        with torch.autocast(inputs.device.type, dtype, enabled=dtype != torch.float32):
            return network(inputs, *args, **kwargs).float()


class ValidationCurve:
    """Ignite handler for the validation evaluator: after each validation, plots every metric against the epoch
    and saves the figure as a PNG (``save_path``), so the curve is there to look at without TensorBoard."""

    def __init__(self, save_path: str) -> None:
        self.save_path = save_path
        self.history: dict[str, list[tuple[int, float]]] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epoch = engine.state.epoch if engine.state.epoch else len(next(iter(self.history.values()), [])) + 1
        for name, value in engine.state.metrics.items():
            self.history.setdefault(name, []).append((epoch, float(value)))
        figure, axes = plt.subplots(1, len(self.history), figsize=(4 * len(self.history), 3), squeeze=False)
        for axis, (name, points) in zip(axes[0], sorted(self.history.items()), strict=True):
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            axis.set_xlabel("epoch")
            axis.set_title(name)
            axis.grid(alpha=0.3)
        figure.tight_layout()
        write_atomic(self.save_path, lambda path: figure.savefig(path, dpi=100))
        plt.close(figure)


class WeightAverage:
    """Ignite handler for the trainer: an exponential moving average of the network's weights and BatchNorm
    statistics (ignite's ``EMAHandler``), saved as a state dict to ``save_path`` when training ends.

    Single checkpoints of one run differ by up to 0.5 dB at one noise setting from one validation to the next
    (``research/experiments.md``); the average of the last few epochs' weights is a steadier model. The average starts
    when training starts, after the ``CheckpointLoader`` handlers listed before it have loaded the weights (an
    ``EMAHandler`` built with the config would copy the network before, at its random initialisation). It has a
    ``state_dict``: in :class:`ResumableTraining`'s ``save_dict`` it joins every checkpoint, and a resumed run goes on
    averaging where it stopped (listed after that handler, so the checkpoint is loaded first).

    Args:
        network: the trained network.
        save_path: where the averaged state dict goes (written atomically: a cancelled run leaves no partial file).
        momentum: share of the current weights in each iteration's update; ``1 / momentum`` iterations is the time
            the average remembers.
    """

    def __init__(self, network: nn.Module, save_path: str, momentum: float = 0.002) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"weight average momentum must be in (0, 1), not {momentum}")
        self.network, self.save_path, self.momentum = network, save_path, momentum
        self.average: EMAHandler | None = None
        self.resumed_average: dict[str, torch.Tensor] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average so far (empty before training starts), for a checkpoint."""
        return self.average.ema_model.state_dict() if self.average is not None else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """A checkpoint's average, to go on from when training (re)starts."""
        self.resumed_average = state or None

    def start(self, engine: Engine) -> None:
        self.average = EMAHandler(self.network, momentum=self.momentum, handle_buffers="update")
        if self.resumed_average is not None:
            self.average.ema_model.load_state_dict(self.resumed_average)
        self.average.attach(engine, name="weight_average_momentum", warn_if_exists=False)

    def save(self, engine: Engine) -> None:
        state = self.average.ema_model.state_dict()
        write_atomic(self.save_path, lambda path: torch.save(state, path))


def average_checkpoints(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of the weights of several fine-tunes of one network, a "model soup" (Wortsman et al. 2022).

    Two runs from the same starting weights with different losses (PSNR, PSNR + SSIM) land in one basin, and their
    mean keeps most of each one's strength (``research/experiments.md``, bundle 0.10.0). Floating-point tensors (weights,
    BatchNorm statistics) are averaged in float32 and stored in their own dtype; integer ones (BatchNorm's batch
    counter) are taken from the first checkpoint.

    Raises:
        ValueError: fewer than two checkpoints, or checkpoints of different networks (keys or shapes differ).
    """
    if len(state_dicts) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(state_dicts)}")
    first = state_dicts[0]
    for index, other in enumerate(state_dicts[1:], start=2):
        if other.keys() != first.keys():
            differing = sorted(set(other) ^ set(first))[:3]
            raise ValueError(f"checkpoint {index} is of another network: keys {differing} are in only one of them")
        mismatched = [key for key in first if other[key].shape != first[key].shape]
        if mismatched:
            raise ValueError(
                f"checkpoint {index} is of another network: {mismatched[0]} has shape "
                f"{tuple(other[mismatched[0]].shape)}, not {tuple(first[mismatched[0]].shape)}"
            )
    return {
        key: (
            torch.stack([state[key].float() for state in state_dicts]).mean(0).to(tensor.dtype)
            if tensor.is_floating_point()
            else tensor.clone()
        )
        for key, tensor in first.items()
    }


class EpochSeed:
    """Ignite handler for the trainer: reseeds the training transforms (crops, flips, contrast, noise) at the start of
    every epoch from ``(seed, epoch)``, so epoch ``e`` draws the same patches and noise whether the run went straight
    through or was resumed from a checkpoint before ``e`` (a transform's random state is not in a checkpoint).

    The order of the slices is the sampler's: a ``DistributedSampler`` (one replica) shuffles by ``seed + epoch``, and
    MONAI's trainer sets its epoch.
    """

    def __init__(self, transform, seed: int = 0) -> None:
        self.transform, self.seed = transform, seed

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        state = np.random.SeedSequence([self.seed, engine.state.epoch]).generate_state(1)[0]
        self.transform.set_random_state(seed=int(state))


class LossSwitch:
    """Ignite handler for the trainer: from epoch ``epoch`` on (1-based, as ignite counts), the trainer's loss is
    ``loss``, and the optimiser's moment estimates start afresh at the switch, so the new loss's gradients do not meet
    step sizes adapted to the old one (per pixel, the PSNR loss's gradient is ``(20 / ln 10) * error / MSE``: about
    430 times the L1 loss's for a patch with an RMS error of 0.02).

    A run resumed after the switch gets the new loss back without a reset (the checkpoint holds the optimiser's state);
    one resumed before it switches at the same epoch as a run that never stopped.
    """

    def __init__(self, loss: Callable, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch < 1:
            raise ValueError(f"epoch counts from 1 (the first epoch), not {epoch}")
        self.loss, self.epoch, self.optimizer = loss, epoch, optimizer

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= self.epoch:
            engine.loss_function = self.loss
        if engine.state.epoch == self.epoch:
            self.optimizer.state.clear()


class PatchSwitch:
    """Ignite handler for the trainer: from epoch ``epoch`` on (1-based), training patches are ``size`` pixels square,
    ``per_slice`` of them per slice, set on the pad (``SpatialPadd``) and crop (``RandSpatialCropSamplesd``) of the
    training ``pipeline``.

    Small patches learn the noise's texture fastest; larger ones hold more of the image, which a blind network needs
    to tell offset noise from bright tissue (whether a patch has dark pixels to show the offset). Keep
    ``size ** 2 * per_slice`` to keep the pixels per step. Like :class:`LossSwitch`, it acts at every epoch start, so a
    resumed run trains on the same patches as one that never stopped.
    """

    def __init__(self, pipeline: Compose, size: int, per_slice: int, epoch: int) -> None:
        if epoch < 1:
            raise ValueError(f"epoch counts from 1 (the first epoch), not {epoch}")
        if size < 1 or per_slice < 1:
            raise ValueError(f"patch size and patches per slice must be positive, not {size} and {per_slice}")
        self.pad, self.crop = (_only(pipeline, kind, "PatchSwitch") for kind in (SpatialPadd, RandSpatialCropSamplesd))
        self.size, self.per_slice, self.epoch = size, per_slice, epoch

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= self.epoch:
            self.pad.padder.spatial_size = (self.size, self.size)
            self.crop.cropper.cropper.roi_size = (self.size, self.size)
            self.crop.cropper.num_samples = self.per_slice


class NoiseSwitch:
    """Ignite handler for the trainer: from epoch ``epoch`` on (1-based), the training ``pipeline``'s
    :class:`~scripts.noise.RandNoised` draws from ``noise`` (a spec string or a model) instead of its own.

    The PSNR loss scales a patch's gradient by 1 / its MSE, so heavily noised patches hardly count; drawing the heavy
    settings more often in that phase gives them their weight back. The new noise draws from the transform's own
    random stream (the one :class:`EpochSeed` reseeds), and the switch acts at every epoch start, so a resumed run
    draws the same noise as one that never stopped.
    """

    def __init__(self, pipeline: Compose, noise: str | Noise, epoch: int) -> None:
        if epoch < 1:
            raise ValueError(f"epoch counts from 1 (the first epoch), not {epoch}")
        self.transform = _only(pipeline, RandNoised, "NoiseSwitch")
        self.noise, self.epoch = parse_noise(noise), epoch

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch >= self.epoch:
            self.transform.noise = self.noise
            self.noise.set_random_state(state=self.transform.R)


class CosineCycles:
    """Learning-rate factor per epoch for ``torch.optim.lr_scheduler.LambdaLR`` (stepped once per epoch): a cosine
    decay from ``peaks[i]`` to zero over ``cycles[i]`` epochs, one cycle after the other (warm restarts, Loshchilov &
    Hutter, SGDR, 2017), zero after the last.

    One cycle with peak 1 is ``CosineAnnealingLR(T_max=cycles[0])``. A later cycle restarts a finished schedule, so a
    run trains on from its end with the first cycle's epochs unchanged (a run resumed from the first cycle's last
    checkpoint is the longer run), and a lower peak keeps what the first cycle learnt.
    """

    def __init__(self, cycles: Sequence[int], peaks: Sequence[float]) -> None:
        if len(cycles) != len(peaks) or not cycles:
            raise ValueError(f"give one peak per cycle, not {len(peaks)} peaks for {len(cycles)} cycles")
        if any(length < 1 for length in cycles) or any(peak < 0 for peak in peaks):
            raise ValueError(f"cycles last at least one epoch and peaks are not negative, not {cycles} and {peaks}")
        self.cycles, self.peaks = [int(length) for length in cycles], [float(peak) for peak in peaks]

    def __call__(self, epoch: int) -> float:
        for length, peak in zip(self.cycles, self.peaks, strict=True):
            if epoch < length:
                return peak * (1 + math.cos(math.pi * epoch / length)) / 2
            epoch -= length
        return 0.0


def _only(pipeline: Compose, kind: type, user: str):
    """The one transform of type ``kind`` in ``pipeline``, which ``user`` (a handler's name) changes."""
    found = [transform for transform in pipeline.transforms if isinstance(transform, kind)]
    if len(found) != 1:
        raise ValueError(f"the training pipeline has {len(found)} {kind.__name__} transforms; {user} needs one")
    return found[0]


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    """The ``checkpoint_epoch=N.pt`` (MONAI ``CheckpointSaver``, ``save_interval``) with the highest N in the folder.

    Raises:
        BundleError: there is none, with what to do.
    """
    found = {}
    for path in Path(checkpoint_dir).glob("checkpoint_epoch=*.pt"):
        match = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", path.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        raise BundleError(
            f"nothing to resume: {checkpoint_dir} holds no checkpoint_epoch=N.pt; start without --resume, or give the "
            "--ckpt_dir of the run to resume"
        )
    return found[max(found)]


def _flag(value: bool | str, name: str) -> bool:
    """A yes/no setting that may come from the command line as text (``--resume true`` arrives as ``"true"``)."""
    if isinstance(value, str):
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if value.strip().lower() not in words:
            raise BundleError(f"--{name} {value!r}: give true or false")
        return words[value.strip().lower()]
    return bool(value)


class ResumableTraining:
    """Ignite handler for the trainer: saves what a run needs to go on (``save_dict``: network, optimiser, LR schedule;
    plus the trainer itself: epoch and iteration) after every epoch as ``checkpoint_epoch=N.pt`` in
    ``checkpoint_dir`` (MONAI ``CheckpointSaver``, the last ``n_saved`` kept, written atomically), and with ``resume``
    loads the newest of them (:func:`latest_checkpoint`) when training starts (MONAI ``CheckpointLoader``), so one
    run spans several working sessions. With :class:`EpochSeed` and a seeded sampler the resumed run draws the same
    slices, patches and noise as one that never stopped.

    The trainer joins ``save_dict`` when the handler is attached: a config cannot name the trainer inside the trainer's
    own handler list (a circular reference).
    """

    def __init__(
        self, checkpoint_dir: str, save_dict: dict, resume: bool | str = False, n_saved: int = 1, map_location=None
    ) -> None:
        self.checkpoint_dir, self.save_dict, self.resume = checkpoint_dir, save_dict, _flag(resume, "resume")
        self.n_saved, self.map_location = n_saved, map_location

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        if self.resume:
            path = latest_checkpoint(self.checkpoint_dir)
            CheckpointLoader(str(path), objects, map_location=self.map_location).attach(engine)
        CheckpointSaver(self.checkpoint_dir, objects, save_interval=1, n_saved=self.n_saved).attach(engine)
