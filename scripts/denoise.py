#!/usr/bin/env python
"""Denoise medical images with the MedDenoise bundle: same shape, geometry, units and dtype out as in.

    python scripts/denoise.py ct.nii.gz -o ct_denoised.nii.gz
    python scripts/denoise.py series_folder/ scan.dcm xray.png -o denoised/ --strength 0.7

INPUT is a NIfTI, NRRD, MHA, single- or multi-frame DICOM file, a PNG/TIFF/JPEG picture or a DICOM series folder.
With one input, OUTPUT is a file (its extension picks the format) or a folder; with several it must be a folder, and
each output keeps its input's base name (DICOM files and series folders become ``.nii.gz``, other pictures ``.png``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

from tqdm import tqdm  # noqa: E402

from scripts.engine import check_volume, denoise_volume, load_bundle  # noqa: E402
from scripts.errors import ImageWriteError, InvalidImageError, MedDenoiseError  # noqa: E402
from scripts.image_io import WRITE_EXTENSIONS, extension, read_image, stem, write_image  # noqa: E402
from scripts.intensity import IntensityWindow  # noqa: E402

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
    parser.add_argument("--batch-size", type=_positive_int, default=8, help="slices per forward pass (default 8)")
    parser.add_argument("--float-output", action="store_true", help="write float32 instead of the input's dtype")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--torchscript", action="store_true", help="run the exported models/model.ts")
    return parser.parse_args(argv)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 (original) and 1 (fully denoised)")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive whole number")
    return value


def output_paths(inputs: list[Path], output: str) -> list[Path]:
    """Where each input's result goes; raises :class:`ImageWriteError` for an ambiguous or clashing plan.

    OUTPUT is a folder when it exists as one, ends with a path separator, or has no image extension.
    """
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


def _default_extension(path: Path) -> str:
    ext = extension(path)
    if ext in WRITE_EXTENSIONS:
        return ext
    return ".png" if ext in _PICTURE_EXTENSIONS else ".nii.gz"


def check_plan(inputs: list[Path], outputs: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, to replace an input or (without ``overwrite``) an existing file."""
    for source, target in zip(inputs, outputs, strict=True):
        if target.exists() and source.exists() and target.resolve() == source.resolve():
            raise ImageWriteError(f"{target}: the output would replace its input; inputs are never modified")
        if target.exists() and not overwrite:
            raise ImageWriteError(f"{target}: the file exists; use --overwrite or choose another output")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    inputs = [Path(path) for path in args.inputs]
    try:
        window = IntensityWindow(*args.window) if args.window else None
        outputs = output_paths(inputs, args.output)
        check_plan(inputs, outputs, args.overwrite)
        model = load_bundle(args.bundle, device=args.device, torchscript=args.torchscript)
        if is_folder(args.output):
            Path(args.output).mkdir(parents=True, exist_ok=True)
        slices = 0
        for source, target in zip(inputs, outputs, strict=True):
            slices += denoise_file(source, target, model, window, args)
    except MedDenoiseError as error:
        print(f"denoise.py: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("denoise.py: interrupted; the file being denoised was not written", file=sys.stderr)
        return 130
    seconds = time.perf_counter() - started
    print(f"denoised {len(inputs)} file(s), {slices} slices in {seconds:.1f} s on {model.device} -> {args.output}")
    return 0


def denoise_file(source: Path, target: Path, model, window: IntensityWindow | None, args: argparse.Namespace) -> int:
    """Denoise one image file or series folder into ``target``; returns the number of slices."""
    volume = read_image(source)
    total = volume.array.shape[args.axis] if volume.array.ndim == 3 else 1
    try:
        check_volume(volume.array, args.axis)  # before the progress bar, so a bad file gives one clean line
        with tqdm(total=total, desc=source.name, unit="slice", leave=False) as bar:

            def progress(done: int, _total: int) -> None:
                bar.update(done - bar.n)

            denoised = denoise_volume(
                volume.array,
                model,
                window=window,
                axis=args.axis,
                batch_size=args.batch_size,
                strength=args.strength,
                float_output=args.float_output,
                progress=progress,
            )
    except InvalidImageError as error:  # the engine sees arrays only; name the file
        raise InvalidImageError(f"{source}: {error}") from None
    write_image(target, denoised, like=volume, overwrite=args.overwrite)
    return total


if __name__ == "__main__":
    sys.exit(main())
