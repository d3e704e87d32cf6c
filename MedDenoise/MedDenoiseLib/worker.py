"""MedDenoise worker: runs one job of the Slicer module in its own Python process (PythonSlicer inside Slicer).

Reads a volume file written by the module, runs the bundle's engine on it and writes the result atomically; Slicer's
viewer stays responsive and Cancel can kill this process without harming Slicer. Progress and results are printed
to stdout as one JSON object per line after the prefix ``MEDDENOISE `` (see :mod:`MedDenoiseLib.job`).

    python worker.py --engine BUNDLE denoise --input in.nrrd --output out.nrrd [--model BUNDLE_OR_ZIP] [--device cpu]
        [--reference clean.nrrd] [--axis 0] [--strength 1] [--batch-size N] [--float-output] [--views 1]
        [--adapt-seconds 60]
    python worker.py --engine BUNDLE add-noise --input in.nrrd --output noisy.nrrd --noise gaussian:factor=0.1 --seed 0
    python worker.py --engine BUNDLE probe    (whether PyTorch sees an NVIDIA GPU; torch stays out of Slicer's process)

Exit status: 0 done, 1 a problem reported in an ``error`` event (bad input, bad model), anything else a crash.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

PREFIX = "MEDDENOISE "

#: ``scripts.pipeline.DenoiseSettings`` fields exposed on the command line. A new setting is added here (name ->
#: argparse settings) and reaches the pipeline unchanged; the module passes it through ``worker_command``.
ENGINE_OPTIONS: dict[str, dict] = {
    "axis": {"type": int, "default": 0, "choices": (0, 1, 2), "help": "slicing axis of the K x J x I array (0 = K)"},
    "strength": {"type": float, "default": 1.0, "help": "0 = original .. 1 = fully denoised"},
    "batch_size": {
        "type": int,
        "default": None,
        "help": "slices per forward pass (default: the engine's pixel budget)",
    },
    "float_output": {"action": "store_true", "help": "write float32 instead of the input's dtype"},
    "views": {"type": int, "default": 1, "help": "self-ensemble: flips/rotations averaged (1, 2, 4 or 8)"},
}


def emit(event: str, **fields) -> None:
    """One protocol line on stdout, flushed at once so the module sees progress as it happens."""
    print(PREFIX + json.dumps({"event": event, **fields}), flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", required=True, help="bundle folder whose 'scripts' package does the work")
    actions = parser.add_subparsers(dest="action", required=True)

    denoise = actions.add_parser("denoise", help="denoise a volume with a bundle's model")
    denoise.add_argument("--input", required=True, help="volume file (NRRD from the module)")
    denoise.add_argument("--output", required=True, help="result file, written atomically")
    denoise.add_argument("--model", default=None, help="bundle folder or .zip (default: the engine's own model)")
    denoise.add_argument("--device", default="auto", help="auto, cpu or cuda")
    denoise.add_argument("--reference", default=None, help="clean volume: report PSNR/SSIM before and after")
    for name, settings in ENGINE_OPTIONS.items():
        denoise.add_argument("--" + name.replace("_", "-"), dest=name, **settings)
    denoise.add_argument(
        "--adapt-seconds", type=float, default=0.0, help="first fine-tune on this scan's own noise (0 = no adaptation)"
    )

    add_noise = actions.add_parser("add-noise", help="add synthetic noise (demonstrations and checks)")
    add_noise.add_argument("--input", required=True)
    add_noise.add_argument("--output", required=True)
    add_noise.add_argument("--noise", required=True, help="noise spec, e.g. gaussian:factor=0.1 (see scripts.noise)")
    add_noise.add_argument("--seed", type=int, default=0)

    actions.add_parser("probe", help="report whether PyTorch sees an NVIDIA GPU")
    return parser.parse_args(argv)


def denoise(args: argparse.Namespace) -> None:
    from scripts import pipeline
    from scripts.engine import load_bundle
    from scripts.image_io import read_image

    reference = read_image(args.reference) if args.reference else None
    emit("status", text="Loading the model")
    model = load_bundle(args.model, device=args.device)
    settings = pipeline.DenoiseSettings(
        **{name: getattr(args, name) for name in ENGINE_OPTIONS}, adapt_seconds=args.adapt_seconds
    )
    run = pipeline.denoise_file(args.input, args.output, model, settings, ProtocolProgress(reference))
    if reference is not None:
        emit("metrics", before=compare(run.volume.array, reference.array), after=compare(run.denoised, reference.array))
    adaptation = run.model.metadata.get("adaptation", {})
    noise = str(run.level)
    if adaptation:  # what the adaptation found, for the status line
        noise += "; correlated over pixels" if adaptation["span"] else "; independent from pixel to pixel"
        noise += "; adapting did not help, kept the model as it was" if adaptation["kept"] == "given" else ""
    emit(
        "done",
        output=args.output,
        model=run.model.source,
        version=run.model.version,
        device=run.model.device.type,
        noise=noise,
        adapted_seconds=adaptation.get("seconds", 0.0),
    )


class ProtocolProgress:
    """The pipeline's progress (a ``scripts.pipeline.Progress``) as protocol events: a status line per stage, then
    ``progress`` events (adapting in seconds, denoising in slices). ``reference``: a clean volume (a
    ``scripts.image_io.Volume``) to compare with, refused before any work unless it has the input's shape."""

    def __init__(self, reference=None) -> None:
        self.reference = reference

    def read(self, run) -> None:
        from scripts.errors import InvalidImageError

        if self.reference is not None and self.reference.array.shape != run.volume.array.shape:
            raise InvalidImageError(
                f"the reference volume has shape {self.reference.array.shape} but the input "
                f"{run.volume.array.shape}; choose the clean version of the same scan"
            )

    @contextlib.contextmanager
    def stage(self, name: str, total: int, run):
        if name == "adapt":
            emit("status", text=f"Adapting to this scan ({run.level})")
            yield lambda done, total: emit("progress", done=done // 1000, total=total // 1000, unit="s")
        else:
            emit("status", text=f"Denoising on {run.model.device.type.upper()}")
            yield lambda done, total: emit("progress", done=done, total=total)


def compare(image, reference) -> dict[str, float]:
    """PSNR/SSIM/MSE of a volume against a clean reference, slice-wise along K, both scaled by the reference's window."""
    from scripts.intensity import IntensityWindow
    from scripts.metrics import image_metrics

    window = IntensityWindow.from_data(reference)
    return image_metrics(window.forward(image)[:, None], window.forward(reference)[:, None])


def add_noise(args: argparse.Namespace) -> None:
    """Noise is drawn on the [0, 1] scale of the volume's window (as in training) and added in native units."""
    import numpy as np

    from scripts.image_io import read_image, write_image
    from scripts.intensity import IntensityWindow
    from scripts.noise import parse_noise

    noise = parse_noise(args.noise)
    volume = read_image(args.input)
    noise.set_random_state(seed=args.seed)
    window = IntensityWindow.from_data(volume.array)
    scaled = window.forward(volume.array)
    noisy = volume.array.astype(np.float32) + (window.inverse(noise(scaled)) - window.inverse(scaled))
    write_image(args.output, noisy, like=volume)
    emit("done", output=args.output, noise=str(args.noise))


def probe(args: argparse.Namespace) -> None:
    import torch

    cuda = torch.cuda.is_available()
    emit("done", cuda=cuda, gpu=torch.cuda.get_device_name(0) if cuda else "", torch=torch.__version__)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, args.engine)
    from scripts.errors import MedDenoiseError

    try:
        {"denoise": denoise, "add-noise": add_noise, "probe": probe}[args.action](args)
    except MedDenoiseError as error:
        emit("error", message=str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
