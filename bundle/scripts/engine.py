"""Slice-wise volume denoising: one engine for the bundle's inference config, the command line and 3D Slicer.

>>> model = load_bundle()                      # the shipped bundle, on CUDA when present
>>> denoised = denoise_volume(volume, model)   # K x J x I array in, same shape, units and dtype out
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .bundle_archive import extract_bundle, file_hash, read_config, shipped_hashes, verify_weights
from .errors import BundleError, CancelledError, InvalidImageError
from .intensity import IntensityWindow
from .networks import DenoisingAutoencoder
from .noise_level import noise_share, posterior_mean, slice_noise_sigma
from .slices import check_volume, slice_stack, unstack

#: ``progress(done, total)`` after each batch; returning ``False`` cancels the run.
ProgressCallback = Callable[[int, int], bool | None]

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
#: Network classes a bundle may name in ``network_def``; nothing else is ever instantiated from a bundle.
NETWORKS: dict[str, Callable[..., torch.nn.Module]] = {
    "scripts.networks.DenoisingAutoencoder": DenoisingAutoencoder,
    "DenoisingAutoencoder": DenoisingAutoencoder,
}
_MONAI_NETWORKS = "monai.networks.nets."
#: The ``monai.networks.nets`` classes a bundle may name: image-to-image networks (output the input's height and
#: width) that take no argument to fetch pretrained weights and can be sized on the meta device before allocation.
#: Others (classifiers, DenseNet/ResNet/FlexibleUNet with ``pretrained``, Transchex, which downloads BERT when built,
#: SwinUNETR, which cannot be built on the meta device) are refused.
MONAI_NETWORKS = (
    "AttentionUnet",
    "AutoEncoder",
    "BasicUNet",
    "DynUNet",
    "HighResNet",
    "MedNeXt",
    "SegResNet",
    "UNet",
    "VNet",
)
#: Arguments that would read or download weights: a bundle's weights come from its models/model.pt alone.
_FETCHING_ARGUMENT = re.compile(r"pretrain|url|download|hub|weights|checkpoint|path|file", re.IGNORECASE)
#: Largest network a bundle may ask for: 100 M parameters (400 MB of float32 weights; the shipped one has 1.4 M,
#: MONAI's largest 2D image-to-image networks about 10 M), counted on the meta device before anything is allocated.
MAX_PARAMETERS = 100_000_000
#: Side of the probe image every loaded network must map to an image of the same shape (the shipped network and the
#: allowed MONAI ones take 64 x 64).
_PROBE_SIDE = 64
#: Pixels per forward pass when no batch size is given (two 512 x 512 slices). Bigger batches were not faster on CPU
#: (scripts/bench_engine.py: 1.30 s/slice at batch 1, 1.32 at 4, 1.40 at 8) while every 512 x 512 slice in a batch
#: holds about 200 MB of activations: at batch 8 the peak grew by 1.8 GB, far over the budget of a 300-slice CT.
BATCH_PIXELS = 2 * 512 * 512
#: Side of the largest square pass: a slice of more than TILE x TILE pixels (a 20000 x 20000 radiograph) is denoised
#: tile by tile from end to end (windowing, network, blend, cast), so the engine's memory beside the input and the
#: output is one tile's arrays and activations plus one band of TILE rows, whatever the image's height (a 2048^2 slice
#: denoised whole peaked 0.62 GB above the loaded model on CPU). Smaller slices go whole: 0.25-overlapping 512 x 512
#: tiles took 2.9x as long on a 2048^2 slice (69 s against 24 s, a busy 2-core CPU) for 0.2 GB less.
#: ``denoise_volume(tile=...)`` changes it.
TILE = 2048
#: Pixels shared by neighbouring tiles, blended with weights that fall linearly towards each tile's inner edges: the
#: network's output near a tile's edge lacks context (and the shipped network's whole-image statistics differ from
#: tile to tile), so no seam shows.
TILE_OVERLAP = 128
#: Bound on the bytes the engine's arrays take per pixel of a pass and per input channel, besides the network's
#: activations and the bands of blended corrections (8 bytes per pixel of ``tile`` rows, two bands while rows carry
#: over): the input window, its [0, 1] copy, the network's output, blend and cast (tracemalloc measured 30 per pixel
#: on a 1500 x 1300 uint16 slice in one pass).
PASS_BYTES_PER_PIXEL = 32


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cuda"`` without a GPU is an error that says so."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BundleError("device 'cuda' was asked for but no CUDA GPU is available; use 'auto' or 'cpu'")
    return device


@dataclasses.dataclass
class LoadedModel:
    """A denoising network ready for inference, with what the engine needs to feed it.

    ``context`` is the number of neighbouring slices on each side given as extra input channels (2.5D; 0 for 2D).
    ``blind_spot`` marks a network trained from scratch with the blind-spot objective (self-supervised; not one adapted
    to a scan, which began as a supervised network): it predicts each pixel from its neighbours only, so it
    over-smooths where the noise is low, and the engine gives back part of the input: per pixel when the network also
    predicts the clean value's variance (a second output channel, :func:`scripts.noise_level.posterior_mean`), else
    one share per slice by the slice's noise level (:func:`scripts.noise_level.noise_share`). ``precision`` is the
    dtype the network's convolutions run in (autocast; :func:`resolve_precision`); outputs are float32 either way.
    """

    network: torch.nn.Module
    device: torch.device
    context: int = 0
    metadata: dict = dataclasses.field(default_factory=dict)
    source: str = ""
    blind_spot: bool = False
    precision: torch.dtype = torch.float32

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    def predict(self, batch: torch.Tensor, views: int = 1) -> torch.Tensor:
        """The network's float32 output for ``batch`` (B, C, H, W) in [0, 1] on ``device``, computed in ``precision``
        and averaged over ``views`` (:func:`predict_self_ensemble`); call it under ``torch.inference_mode()``."""
        with torch.autocast(self.device.type, self.precision, enabled=self.precision != torch.float32):
            output = predict_self_ensemble(self.network, batch, views)
        if (
            not isinstance(output, torch.Tensor)
            or output.shape[:1] + output.shape[2:] != batch.shape[:1] + batch.shape[2:]
        ):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise BundleError(
                f"{self.source}: the network maps an input of shape {tuple(batch.shape)} to {shape}, not to one image "
                "of the input's size; it is not a denoising network"
            )
        if output.shape[1] not in (1, 2):
            raise BundleError(
                f"{self.source}: the network gives {output.shape[1]} output channels; a denoising network gives 1 "
                "(or 2: the image and its prior variance)"
            )
        return output.float()


def build_network(network_def: dict) -> torch.nn.Module:
    """Instantiate ``network_def`` (a config's ``{"_target_": ..., **args}``) from the allow-list only.

    The target must be a MedDenoise network or one of :data:`MONAI_NETWORKS`, every argument a plain value (no
    ``$`` expression or ``@`` reference) and none a way to fetch weights, so a bundle from elsewhere cannot run code or
    reach the network through its config. The network is first built on the meta device (no memory) and refused
    beyond :data:`MAX_PARAMETERS`, so an absurd size never reaches the allocator.
    """
    if not isinstance(network_def, dict) or "_target_" not in network_def:
        raise BundleError("network_def must be a mapping with a '_target_' naming the network class")
    target = str(network_def["_target_"])
    args = {k: v for k, v in network_def.items() if k != "_target_"}
    for key, value in args.items():
        if isinstance(value, str) and value[:1] in ("$", "@", "%"):
            raise BundleError(f"network_def argument {key}={value!r} is an expression; only plain values are allowed")
        if _FETCHING_ARGUMENT.search(str(key)) and value:
            raise BundleError(
                f"network_def argument {key}={value!r} would load or download weights; a bundle's weights come from "
                "its models/model.pt only: remove the argument"
            )
    name = target[len(_MONAI_NETWORKS) :] if target.startswith(_MONAI_NETWORKS) else None
    if target in NETWORKS:
        cls = NETWORKS[target]
    elif name in MONAI_NETWORKS:
        import monai.networks.nets as nets

        cls = getattr(nets, name)
    else:
        allowed = [*sorted(NETWORKS), *(_MONAI_NETWORKS + net for net in MONAI_NETWORKS)]
        raise BundleError(f"network_def names {target!r}; allowed are {', '.join(allowed)}")
    try:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in cls(**args).parameters())
    except (TypeError, ValueError, RuntimeError) as error:  # NotImplementedError included
        raise BundleError(f"network_def for {target} has invalid arguments: {_torch_error_detail(error)}") from None
    if parameters > MAX_PARAMETERS:
        raise BundleError(
            f"network_def for {target} asks for {parameters:,} parameters (limit {MAX_PARAMETERS:,}, "
            f"{4 * parameters / 2**30:.1f} GiB of weights); the bundle is broken or not a denoising network"
        )
    return cls(**args)


def read_bundle_config(bundle_dir: Path) -> tuple[dict, dict]:
    """``(metadata, inference config)`` of a bundle folder, read as plain data (nothing evaluated)."""
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise BundleError(f"{bundle_dir}: not a MONAI bundle (configs/metadata.json is missing)")
    metadata = read_config(meta_file)
    if not isinstance(metadata, dict):
        raise BundleError(f"{meta_file}: expected a JSON object with the bundle's metadata")
    for name in ("inference.yaml", "inference.json"):
        config_file = bundle_dir / "configs" / name
        if config_file.is_file():
            config = read_config(config_file)
            return metadata, config if isinstance(config, dict) else {}
    raise BundleError(f"{bundle_dir}: configs/inference.yaml (or .json) is missing")


def _input_channels(metadata: dict, bundle_dir: Path) -> int:
    """``network_data_format.inputs.image.num_channels`` (default 1): 1 or 2k+1 neighbouring slices."""
    channels: Any = metadata
    for key in ("network_data_format", "inputs", "image"):
        channels = channels.get(key, {}) if isinstance(channels, dict) else None
        if not isinstance(channels, dict):
            raise BundleError(f"{bundle_dir}: metadata {key} must be a JSON object; fix configs/metadata.json")
    channels = channels.get("num_channels", 1)
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1 or channels % 2 == 0:
        raise BundleError(
            f"{bundle_dir}: metadata says {channels} input channels; expected 1 or 2k+1 neighbouring slices"
        )
    return channels


#: Choices of :func:`resolve_precision`.
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str, device: torch.device, network: torch.nn.Module | None = None) -> torch.dtype:
    """The dtype the network computes in: ``"float32"``, ``"bfloat16"``, or ``"auto"``: bfloat16 for a residual
    network on a CPU with native bfloat16 arithmetic (AVX512-BF16 or AMX), float32 otherwise.

    Why: on this project's AVX512-BF16 CPU, bfloat16 convolutions (oneDNN, float32 accumulation) denoise a 512x512
    slice about 2x faster than float32 (``scripts/bench_engine.py``). A residual network predicts the noise and
    subtracts it from the float32 input, so rounding stays relative to the noise: benchmark PSNR within 0.02 dB of
    float32 at nine of ten settings (``research/experiments.md``). A network that outputs the image itself would
    have it rounded to 1/256 of its value (a few HU of banding on CT), and CPUs without native bfloat16 emulate it,
    slower than float32: both stay float32, as CUDA does.
    """
    if precision not in PRECISIONS:
        raise BundleError(f"precision must be one of {PRECISIONS}, not {precision!r}; use 'auto' unless measuring")
    if precision == "auto":
        native = (
            getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
        )
        residual = getattr(network, "residual", False)
        return torch.bfloat16 if device.type == "cpu" and native and residual else torch.float32
    return getattr(torch, precision)


def load_bundle(
    bundle: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    torchscript: bool = False,
    precision: str = "auto",
) -> LoadedModel:
    """Load a bundle folder's or release zip's network and weights (default: this bundle, with its shipped model).

    A ``.zip`` (from ``scripts/package_bundle.py`` or the Model Zoo) is extracted safely into the user's cache folder
    first (:func:`scripts.bundle_archive.extract_bundle`); no code from it is run.

    Weights come from ``models/model.pt`` (a state dict, loaded with ``weights_only=True``) into the network built by
    :func:`build_network`; with ``torchscript=True`` from ``models/model.ts``. The network's input channels must match
    the metadata (``network_data_format.inputs.image.num_channels``). ``precision``: see :func:`resolve_precision`.
    A bundle whose metadata holds ``"blind_spot": true`` (a model trained with the blind-spot objective,
    ``configs/train_selfsupervised.yaml``) loads as :attr:`LoadedModel.blind_spot`, so the engine blends its output.
    """
    bundle_dir = Path(bundle) if bundle else BUNDLE_ROOT
    if bundle_dir.suffix.lower() == ".zip":
        bundle_dir = extract_bundle(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir}: no such bundle folder")
    metadata, config = read_bundle_config(bundle_dir)
    if not re.fullmatch(r"\d+\.\d+\.\d+([-+][0-9A-Za-z.+-]+)?", str(metadata.get("version", ""))):
        raise BundleError(
            f"{bundle_dir}: metadata version {metadata.get('version')!r} is not a semantic version such as 0.1.0; "
            "the bundle is not a release, get it again from its publisher"
        )
    blind_spot = metadata.get("blind_spot", False)
    if not isinstance(blind_spot, bool):
        raise BundleError(f"{bundle_dir}: metadata blind_spot is {blind_spot!r}; it must be true or false")
    device = resolve_device(device)
    channels = _input_channels(metadata, bundle_dir)
    if torchscript:
        network = _load_torchscript(bundle_dir, device)
    else:
        network = build_network(config.get("network_def", {}))
        if getattr(network, "in_channels", channels) != channels:
            raise BundleError(
                f"{bundle_dir}: network_def takes {network.in_channels} input channels but the metadata says {channels}"
            )
        _load_weights(network, bundle_dir)
    _check_finite(network, bundle_dir)
    # Channels-last (NHWC) lets oneDNN run the convolutions without layout reorders: measured 1.5-2x faster per
    # 512x512 slice on CPU than the default NCHW (scripts/bench_engine.py); TorchScript freezing gained nothing more.
    network = network.to(device=device, memory_format=torch.channels_last).eval()
    compute_dtype = resolve_precision(precision, device, network)
    model = LoadedModel(
        network,
        device,
        context=channels // 2,
        metadata=metadata,
        source=str(bundle_dir),
        blind_spot=blind_spot,
        precision=compute_dtype,
    )
    with torch.inference_mode():
        model.predict(torch.full((1, channels, _PROBE_SIDE, _PROBE_SIDE), 0.5, device=device))
    return model


def _load_weights(network: torch.nn.Module, bundle_dir: Path) -> None:
    """Load ``models/model.pt`` (hash-checked, :func:`scripts.bundle_archive.verify_weights`) into ``network``:
    a state dict whose every tensor has the network's own name and shape."""
    checkpoint = bundle_dir / "models" / "model.pt"
    if not checkpoint.is_file():
        raise BundleError(f"{checkpoint}: the model weights are missing; train the bundle or use a bundle with weights")
    verify_weights(bundle_dir, "models/model.pt")
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # any unpickling failure means an unusable file
        raise BundleError(f"{checkpoint}: not a loadable weights file ({error})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(
            f"{checkpoint}: holds {type(state).__name__}, not a state dict of named tensors; "
            "save the weights with torch.save(network.state_dict(), ...)"
        )
    expected = network.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise BundleError(
            f"{checkpoint}: the weights do not fit network_def (missing: {missing[:3]}, unexpected: {unexpected[:3]}); "
            "the checkpoint belongs to a different network"
        )
    # load_state_dict accepts a one-element tensor for a scalar; a bundle's weights have the network's shapes exactly.
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise BundleError(
                f"{checkpoint}: the weights do not fit network_def ({name} has shape {tuple(tensor.shape)}, the "
                f"network {tuple(expected[name].shape)}); the checkpoint belongs to a different network"
            )
    network.load_state_dict(state)


def _check_finite(network: torch.nn.Module, bundle_dir: Path) -> None:
    """Refuse NaN/Inf weights or statistics: the network would turn every image into NaN (written as zeros)."""
    for name, tensor in network.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BundleError(
                f"{bundle_dir}: the weights hold NaN or Inf values ({name}); the model is broken, "
                "retrain it or get the bundle again from its publisher"
            )


def _torch_error_detail(error: Exception) -> str:
    """The second non-empty line of a PyTorch error: the first specific one (its state-dict messages list every
    tensor after a general first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else lines[0] if lines else type(error).__name__


def _load_torchscript(bundle_dir: Path, device: torch.device) -> torch.nn.Module:
    """The bundle's ``models/model.ts``, only if it is this bundle's own export.

    A TorchScript file is a program, not data: its ``forward`` can read and write files (``torch.from_file``), loop
    forever or do anything else TorchScript can, and no load option limits that. So only the export whose sha256 the
    shipped bundle's ``large_files.yml`` records runs (the shipped bundle or its release zip); any other bundle runs
    from its weights through the allow-list (:func:`build_network`), which gives the same result. No "trust" switch:
    the user who would flip it cannot read a TorchScript file either.
    """
    path = bundle_dir / "models" / "model.ts"
    if not path.is_file():
        raise BundleError(
            f"{path}: the TorchScript model is missing; export it with PYTHONPATH={bundle_dir} python -m monai.bundle "
            f"ckpt_export network_def --filepath {path} --ckpt_file {bundle_dir / 'models' / 'model.pt'} "
            f"--meta_file {bundle_dir / 'configs' / 'metadata.json'} "
            f"--config_file {bundle_dir / 'configs' / 'inference.json'}"
        )
    verify_weights(bundle_dir, "models/model.ts")
    if file_hash(path) not in shipped_hashes("models/model.ts"):
        raise BundleError(
            f"{path}: this TorchScript file is not MedDenoise's own export (its sha256 is not the shipped one), and a "
            "TorchScript file is a program that could read, write or run anything; run this bundle without "
            "--torchscript, from its weights (models/model.pt), which give the same result"
        )
    try:
        return torch.jit.load(str(path), map_location=device)
    except Exception as error:  # any load failure means an unusable file
        raise BundleError(f"{path}: not a loadable TorchScript model ({error})") from None


#: Views of the self-ensemble as (quarter turns, mirror), in the order used: the first 2, 4 or all 8.
ENSEMBLE_VIEWS = ((0, False), (0, True), (2, False), (2, True), (1, False), (1, True), (3, False), (3, True))
#: Self-ensemble sizes: each is a group of flips/rotations, so every view has its mirror or turn in the mean.
ENSEMBLE_SIZES = (1, 2, 4, 8)


def predict_self_ensemble(network: torch.nn.Module, batch: torch.Tensor, views: int = 8) -> torch.Tensor:
    """The mean of ``network``'s outputs over ``views`` (1, 2, 4 or 8) flips and 90-degree rotations of ``batch``
    (B, C, H, W), each mapped back: the self-ensemble of Timofte et al. (2016). 2 = identity and left-right mirror;
    4 adds the up-down mirror and the half turn; 8 adds the quarter turns. A fixed set, unlike MONAI's random
    ``TestTimeAugmentation``, so the result is deterministic. Returns (B, out_channels, H, W)."""
    _check_views(views)
    if views == 1:
        return network(batch)
    outputs = []
    for quarter_turns, mirror in ENSEMBLE_VIEWS[:views]:
        view = torch.rot90(batch, quarter_turns, dims=(-2, -1))
        view = view.flip(-1) if mirror else view
        out = network(view.contiguous(memory_format=torch.channels_last))
        out = out.flip(-1) if mirror else out
        outputs.append(torch.rot90(out, -quarter_turns, dims=(-2, -1)))
    return torch.stack(outputs).mean(dim=0)


def _check_views(views: int) -> None:
    if views not in ENSEMBLE_SIZES:
        raise InvalidImageError(f"self-ensemble views must be one of {ENSEMBLE_SIZES}, not {views}")


def denoise_volume(
    volume: np.ndarray,
    model: LoadedModel,
    window: IntensityWindow | None = None,
    axis: int = 0,
    batch_size: int | None = None,
    strength: float = 1.0,
    float_output: bool = False,
    progress: ProgressCallback | None = None,
    views: int = 1,
    tile: int = TILE,
) -> np.ndarray:
    """Denoise a K x J x I volume (or a J x I image) slice by slice along ``axis``.

    Args:
        volume: the input in native units (HU, MR magnitude, ...); never modified.
        model: from :func:`load_bundle`.
        window: native-units window mapped to [0, 1] for the network; default :meth:`IntensityWindow.from_data`, as in
            training. Values outside the window are kept: the network's correction is added to the original voxel.
        axis: slicing axis (0 = acquisition axis of an oriented volume).
        batch_size: slices per forward pass; peak memory grows with it, not with the volume. Default: as many slices
            as fit in :data:`BATCH_PIXELS`.
        strength: 0..1 blend between original (0) and fully denoised (1).
        float_output: return float32; otherwise integer input is rounded and clipped to its dtype's range and float
            input keeps its float dtype.
        progress: ``progress(done, total)`` after each batch; returning ``False`` cancels (raises
            :class:`CancelledError`, nothing is returned).
        views: average the network's output over this many flips/rotations of each slice (1, 2, 4 or 8,
            :func:`predict_self_ensemble`): ``views`` times the time for a cleaner result.
        tile: side of the largest pass (more than ``2 * TILE_OVERLAP``): a slice of more pixels is denoised one
            tile at a time from end to end, neighbouring tiles blended over :data:`TILE_OVERLAP` pixels, so the memory
            beside the input and the output is at most :data:`PASS_BYTES_PER_PIXEL` x channels x ``tile^2`` bytes of
            one tile's arrays, 8 x ``tile`` x the slice's width bytes of blended rows, and the network's activations
            for a ``tile`` x ``tile`` image. A blind-spot network's blend measures the noise per tile.

    Returns:
        An array of the input's shape, in the input's units.
    """
    volume = check_volume(volume, axis)
    _check_views(views)
    if not 0.0 <= strength <= 1.0:
        raise InvalidImageError(f"strength {strength} must be between 0 (original) and 1 (fully denoised)")
    if batch_size is not None and batch_size < 1:
        raise InvalidImageError(f"batch size {batch_size} must be at least 1")
    if tile <= 2 * TILE_OVERLAP:
        raise InvalidImageError(
            f"tile side {tile} must be more than {2 * TILE_OVERLAP} pixels, twice what neighbouring tiles share"
        )
    window = window or IntensityWindow.from_data(volume)
    out_dtype = np.dtype(np.float32) if float_output else volume.dtype
    stack = slice_stack(volume, axis)
    total, height, width = stack.shape
    whole = height * width <= tile**2
    batch_size = (batch_size or max(1, BATCH_PIXELS // (height * width))) if whole else 1
    side = max(height, width) if whole else tile
    rows, columns = _spans(height, side), _spans(width, side)
    row_weights, column_weights = _weight_sums(rows, height), _weight_sums(columns, width)
    output = np.empty(stack.shape, dtype=out_dtype)
    offsets = np.arange(-model.context, model.context + 1)
    finish_rows = max(1, tile**2 // (4 * width))  # rows cast at a time: a quarter of a tile's pixels

    def finish(batch: slice, blended: np.ndarray, first: int, stop: int) -> None:
        """Write rows ``first:stop`` of ``batch``, whose corrections ``blended`` (from row ``first``) are complete."""
        for top in range(first, stop, finish_rows):
            bottom = min(stop, top + finish_rows)
            weights = row_weights[top:bottom, None] * column_weights[None, :]
            correction = blended[:, top - first : bottom - first] / weights
            result = stack[batch, top:bottom].astype(np.float32) + np.float32(strength) * correction
            output[batch, top:bottom] = _cast(result, out_dtype)

    with torch.inference_mode():
        for start in range(0, total, batch_size):
            batch = slice(start, min(total, start + batch_size))
            neighbours = np.clip(np.arange(batch.start, batch.stop)[:, None] + offsets, 0, total - 1)  # edges repeat
            blended, first = np.zeros((len(neighbours), 0, width), np.float32), 0  # rows from ``first`` on
            for top, bottom, row_ramp in rows:
                finish(batch, blended, first, top)  # no later tile reaches above ``top``
                carried = blended[:, top - first :]
                blended = np.zeros((len(neighbours), bottom - top, width), np.float32)
                blended[:, : carried.shape[1]] = carried
                first = top
                for left, right, column_ramp in columns:
                    correction = _correction(
                        model, stack, neighbours, slice(top, bottom), slice(left, right), window, views
                    )
                    blended[:, :, left:right] += correction * (row_ramp[:, None] * column_ramp[None, :])
            finish(batch, blended, first, height)
            if progress is not None and progress(batch.stop, total) is False:
                raise CancelledError(f"cancelled after {batch.stop} of {total} slices; nothing was written")
    return unstack(output, volume, axis)


def _spans(length: int, tile: int) -> list[tuple[int, int, np.ndarray]]:
    """``(start, stop, weights)`` of tiles of at most ``tile`` pixels along an axis of ``length``, neighbours sharing
    :data:`TILE_OVERLAP` pixels (the last, flush with the end, at least that); the weights (float32, one per pixel of
    the tile) fall linearly over :data:`TILE_OVERLAP` pixels towards an edge inside the image and stay 1 at the
    image's own edges."""
    if length <= tile:
        return [(0, length, np.ones(length, np.float32))]
    step = tile - TILE_OVERLAP
    spans = []
    for start in (min(number * step, length - tile) for number in range(-(-(length - TILE_OVERLAP) // step))):
        position = np.arange(tile, dtype=np.float32) + 0.5
        weights = np.ones(tile, np.float32)
        if start > 0:
            weights = np.minimum(weights, position / TILE_OVERLAP)
        if start + tile < length:
            weights = np.minimum(weights, (tile - position) / TILE_OVERLAP)
        spans.append((int(start), int(start) + tile, weights))
    return spans


def _weight_sums(spans: list[tuple[int, int, np.ndarray]], length: int) -> np.ndarray:
    """Each pixel's total weight over the tiles of :func:`_spans` along one axis (float32, ``length``; all > 0)."""
    total = np.zeros(length, np.float32)
    for start, stop, weights in spans:
        total[start:stop] += weights
    return total


def _correction(
    model: LoadedModel,
    stack: np.ndarray,
    neighbours: np.ndarray,
    rows: slice,
    columns: slice,
    window: IntensityWindow,
    views: int,
) -> np.ndarray:
    """One pass of :func:`denoise_volume`: the slices ``neighbours[:, context]`` of ``stack`` (K x H x W, native
    units), each with its ``neighbours`` (B x C slice indices) as channels, within ``rows`` and ``columns``; returns
    what denoising adds to each voxel there at full strength (B x rows x columns, float32, native units)."""
    scaled = window.forward(stack[neighbours, rows, columns])  # (B, C, rows, columns) in [0, 1]
    inputs = torch.from_numpy(scaled).to(model.device).contiguous(memory_format=torch.channels_last)
    outputs = model.predict(inputs, views).cpu().numpy()
    del inputs
    noisy, pred = scaled[:, model.context], outputs[:, 0]
    posterior = model.blind_spot and outputs.shape[1] == 2  # (mean, log prior variance): blend per pixel
    if posterior:
        pred = np.stack(
            [
                posterior_mean(image, mean, log_prior, slice_noise_sigma(image))
                for image, mean, log_prior in zip(noisy, pred, outputs[:, 1], strict=True)
            ]
        )
    # A linear output head can leave [0, 1] on inputs unlike any training image; clamped, no voxel moves further than
    # strength x window width (the benchmark scores the same clamped output).
    np.clip(pred, 0.0, 1.0, out=pred)
    shares = np.ones(len(pred), dtype=np.float32)
    if model.blind_spot and not posterior:
        shares[:] = [noise_share(image, p) for image, p in zip(noisy, pred, strict=True)]
    return shares[:, None, None] * (window.inverse(pred) - window.inverse(noisy))


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to an integer dtype's range; clip to a float dtype's finite range (float16 overflows early)."""
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    # float64 for integers: float32 rounds uint32/int32 limits (e.g. 4294967295) past the range, and the cast wraps.
    values = np.rint(values.astype(np.float64)) if dtype.kind in "iu" else values
    return np.clip(values, info.min, info.max).astype(dtype)
