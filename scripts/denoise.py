#!/usr/bin/env python
"""Denoise medical images with the MedDenoise bundle: same shape, geometry, units and dtype out as in.

    python scripts/denoise.py ct.nii.gz -o ct_denoised.nii.gz
    python scripts/denoise.py series_folder/ scan.dcm xray.png -o denoised/ --strength 0.7
    python scripts/denoise.py ct_series/ -o ct_series_denoised/
    python scripts/denoise.py low_dose.nii.gz -o denoised.nii.gz --adapt --adapt-seconds 120

INPUT is a NIfTI, NRRD, MHA, single- or multi-frame DICOM file, a PNG/TIFF/JPEG picture or a DICOM series folder.
With one input, OUTPUT is a file (its extension picks the format) or a folder; with several it must be a folder, and
each output keeps its input's base name (DICOM files and series folders become ``.nii.gz``, other pictures ``.png``;
a format that cannot hold the result is replaced: ``.tif`` for a 2D image PNG cannot hold, ``.nii.gz`` for volumes).
One DICOM input (a series folder, or a single- or multi-frame file) with OUTPUT a folder or a ``.dcm`` file gives a
derived DICOM series instead: one file per input instance, new series in the same study, pixels in the input's stored
representation, ready to send back to a PACS. The summary line reports each input's estimated noise level.
``--adapt`` first fine-tunes a copy of the model on each noisy input itself (self-supervised, blind-spot objective) for
``--adapt-seconds``, for noise the model was not trained on, and says whether it found the noise correlated over
pixels (then it hides blocks of pixels, not single ones).
"""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    """Ctrl-C or SIGTERM before any work (the imports take seconds): nothing to clean up, so exit quietly now."""
    print("denoise.py: interrupted while starting; nothing was written", file=sys.stderr)
    os._exit(130)


def _on_interrupt(handler) -> None:
    """Handle Ctrl-C and SIGTERM with ``handler``, except a signal the caller ignores (a shell's background job)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, handler)


if __name__ == "__main__":
    _on_interrupt(_interrupted_while_starting)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

from tqdm import tqdm  # noqa: E402

from scripts import pipeline  # noqa: E402
from scripts.dicom_writer import check_target, dicom_files, is_dicom_input  # noqa: E402
from scripts.engine import ENSEMBLE_SIZES, PRECISIONS, TILE, TILE_OVERLAP, load_bundle  # noqa: E402
from scripts.errors import ImageWriteError, InvalidImageError, MedDenoiseError  # noqa: E402
from scripts.image_io import MAX_IMAGE_BYTES, WRITE_EXTENSIONS, check_writable, extension, stem  # noqa: E402
from scripts.noise_level import NoiseLevel  # noqa: E402
from scripts.pipeline import DenoisedFile, DenoiseSettings, Progress  # noqa: E402
from scripts.selfsupervised import MAX_ADAPT_SECONDS  # noqa: E402

#: 2D picture formats that cannot be written back as they are (JPEG is lossy, the others unsupported) become PNG.
_PICTURE_EXTENSIONS = (".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".pnm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="denoise.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or DICOM series folders")
    parser.add_argument("-o", "--output", required=True, metavar="OUTPUT", help="output file, or folder (ends in /)")
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped bundle)")
    parser.add_argument("--axis", type=int, choices=(0, 1, 2), default=0, help="slicing axis (default 0, acquisition)")
    parser.add_argument(
        "--window",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="native-units window mapped to [0, 1] (e.g. -1000 1000 for CT); default: from the data, as in training",
    )
    parser.add_argument("--strength", type=_fraction, default=1.0, help="0 = original .. 1 = fully denoised (default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=None, help="slices per forward pass (default: 2 slices of 512x512)"
    )
    parser.add_argument(
        "--tile",
        type=_tile_side,
        default=TILE,
        metavar="PIXELS",
        help=f"larger slices are denoised in tiles of PIXELS x PIXELS, blended; smaller tiles use less memory "
        f"(default {TILE})",
    )
    parser.add_argument("--float-output", action="store_true", help="write float32 instead of the input's dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument(
        "--max-image-mb",
        type=_positive_float,
        default=None,
        help=f"largest decoded input image in MiB (default {MAX_IMAGE_BYTES >> 20}, and files that expand over 100x "
        "their size on disk are refused as decompression bombs); checked from the header before reading",
    )
    parser.add_argument("--torchscript", action="store_true", help="run the exported models/model.ts")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="what the network computes in (default auto: bfloat16 on CPUs that have it natively, 2x faster)",
    )
    parser.add_argument(
        "--views",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=1,
        metavar="N",
        help="average over N flips/rotations of each slice (1, 2, 4, 8): N times slower, cleaner (default 1)",
    )
    parser.add_argument("--adapt", action="store_true", help="fine-tune on each input's own noise before denoising")
    parser.add_argument(
        "--adapt-seconds",
        type=_adapt_seconds,
        default=60.0,
        help=f"time spent adapting per input (default 60, at most {MAX_ADAPT_SECONDS:g})",
    )
    return parser.parse_args(argv)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 (original) and 1 (fully denoised)")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _adapt_seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and 0 < value <= MAX_ADAPT_SECONDS):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds above 0 and at most {MAX_ADAPT_SECONDS:g}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def _tile_side(text: str) -> int:
    value = int(text)
    if value <= 2 * TILE_OVERLAP:
        raise argparse.ArgumentTypeError(
            f"{text} must be more than {2 * TILE_OVERLAP} pixels, twice what neighbouring tiles share"
        )
    return value


def output_paths(inputs: list[Path], output: str) -> list[Path]:
    """Where each input's result goes; raises :class:`ImageWriteError` for an ambiguous or clashing plan.

    OUTPUT is a folder when it exists as one, ends with a path separator, or has no image extension. For a derived
    DICOM series (:func:`dicom_output`) OUTPUT itself is the target.
    """
    if output == "-":
        raise ImageWriteError("-o -: images cannot be written to standard output; give an output file or folder")
    if is_folder(output) and Path(output.rstrip("/\\") or output).exists() and not Path(output).is_dir():
        raise ImageWriteError(
            f"{output}: an existing file, not a folder; give a folder, or an output file name with an image extension"
        )
    if dicom_output(inputs, output):
        return [Path(output)]
    if not is_folder(output):
        if len(inputs) > 1:
            raise ImageWriteError(f"{output}: {len(inputs)} inputs need OUTPUT to be a folder (end it with '/')")
        return [Path(output)]
    paths = [Path(output) / (stem(path) + _default_extension(path)) for path in inputs]
    clashes = sorted({path.name for path in paths if paths.count(path) > 1})
    if clashes:
        raise ImageWriteError(
            f"{output}: several inputs would be written to {', '.join(clashes)}; rename or split them"
        )
    return paths


def is_folder(output: str) -> bool:
    return Path(output).is_dir() or output.endswith(("/", "\\")) or not extension(output)


def dicom_output(inputs: list[Path], output: str) -> bool:
    """One DICOM input (series folder or file) and OUTPUT a folder or ``.dcm`` file: write a derived DICOM series."""
    return len(inputs) == 1 and (extension(output) == ".dcm" or is_folder(output)) and is_dicom_input(inputs[0])


def _default_extension(path: Path) -> str:
    ext = extension(path)
    if ext in WRITE_EXTENSIONS:
        return ext
    return ".png" if ext in _PICTURE_EXTENSIONS else ".nii.gz"


def check_plan(inputs: list[Path], outputs: list[Path], overwrite: bool, dicom: bool = False) -> None:
    """Refuse, before any work, to replace an input, (without ``overwrite``) an existing file, or to write where
    nothing can be written (an unknown extension, a missing or read-only folder)."""
    for source, target in zip(inputs, outputs, strict=True):
        if target.exists() and source.exists() and target.resolve() == source.resolve():
            raise ImageWriteError(f"{target}: the output would replace its input; inputs are never modified")
        if dicom:
            files = dicom_files(source)
            if any(path.resolve().parent == target.resolve() for path in files):
                raise ImageWriteError(f"{target}: the folder holds the input; choose a new folder for the DICOM series")
            check_target(target, files, overwrite)
            continue
        if target.is_file() and not overwrite:
            raise ImageWriteError(f"{target}: the file exists; use --overwrite or choose another output")
        check_writable(target, overwrite=overwrite)


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # read-only file system, a file in the way, no permission
        raise ImageWriteError(
            f"{folder}: the output folder cannot be made ({error.strerror}); choose another"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    inputs = [Path(path) for path in args.inputs]
    try:
        if args.window and not args.window[0] < args.window[1]:
            raise InvalidImageError(
                f"--window {args.window[0]:g} {args.window[1]:g}: LOW must be below HIGH (e.g. -1000 1000 for CT)"
            )
        dicom = dicom_output(inputs, args.output)
        outputs = output_paths(inputs, args.output)
        if dicom and args.float_output:
            raise ImageWriteError(f"{args.output}: DICOM keeps the input's integer pixels; drop --float-output")
        if is_folder(args.output) and not dicom:
            make_folder(Path(args.output))
        check_plan(inputs, outputs, args.overwrite, dicom)
        model = load_bundle(args.bundle, device=args.device, torchscript=args.torchscript, precision=args.precision)
        settings = DenoiseSettings(
            window=args.window,
            axis=args.axis,
            strength=args.strength,
            views=args.views,
            batch_size=args.batch_size,
            tile=args.tile,
            float_output=args.float_output,
            adapt_seconds=args.adapt_seconds if args.adapt else 0.0,
            overwrite=args.overwrite,
            max_bytes=None if args.max_image_mb is None else int(args.max_image_mb * 2**20),
        )
        slices, levels = 0, []
        for source, target in zip(inputs, outputs, strict=True):
            run = pipeline.denoise_file(
                source, target, model, settings, ProgressBars(), dicom=dicom, fit_format=is_folder(args.output)
            )
            slices, levels = slices + run.slices, [*levels, run.level]
    except MedDenoiseError as error:
        print(f"denoise.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("denoise.py: interrupted; the file being denoised was not written", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    adapted = f", adapted {args.adapt_seconds:g} s each" if args.adapt else ""
    print(
        f"denoised {len(inputs)} file(s), {slices} slices in {seconds:.1f} s on {model.device}{adapted} -> "
        f"{args.output}; {_noise_summary(levels)}"
    )
    return 0


def _noise_summary(levels: list[NoiseLevel]) -> str:
    if len(levels) == 1:
        return str(levels[0])
    scaled = [level.sigma_scaled for level in levels]
    return f"noise sigma {min(scaled):.3f}-{max(scaled):.3f} of the windows"


class ProgressBars(Progress):
    """tqdm bars on the terminal, one per stage of a file (adapting in seconds, denoising in slices)."""

    @contextlib.contextmanager
    def stage(self, name: str, total: int, run: DenoisedFile):
        if name == "adapt":
            with tqdm(total=round(total / 1000), desc=f"adapting to {run.source.name}", unit="s", leave=False) as bar:
                yield lambda done_ms, _total_ms: bar.update(round(done_ms / 1000) - bar.n)
            tqdm.write(adaptation_line(run.source.name, run.model.metadata["adaptation"]))
        else:
            with tqdm(total=total, desc=run.source.name, unit="slice", leave=False) as bar:
                yield lambda done, _total: bar.update(done - bar.n)


def adaptation_line(name: str, record: dict) -> str:
    """What adapting to one input found and did (``metadata["adaptation"]`` of the adapted model)."""
    side = 2 * record["span"] + 1
    kind = "correlated over pixels" if record["span"] else "independent from pixel to pixel"
    kept = (
        "kept"
        if record["kept"] == "adapted"
        else "kept the shipped model instead: the adapted one would not have been better on this scan"
    )
    return (
        f"{name}: noise {kind}; adapted for {record['seconds']:.0f} s ({record['steps']} steps, {side}x{side} blind "
        f"spot), estimated error {record['adapted_risk']:.3g} against {record['given_risk']:.3g}: {kept}"
    )


if __name__ == "__main__":
    # From here on Ctrl-C and SIGTERM raise KeyboardInterrupt: the run cleans up and writes nothing. One that lands
    # outside main's own handler (e.g. while it reports an error) ends the same way, without a traceback.
    _on_interrupt(signal.default_int_handler)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        _on_interrupt(signal.SIG_IGN)
        print("denoise.py: interrupted; the file being denoised was not written", file=sys.stderr)
        sys.exit(130)
