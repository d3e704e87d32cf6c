#!/usr/bin/env python
"""Build the bundle's Model Zoo release zip and check it by loading it from a fresh folder and denoising a real image.

    python scripts/package_bundle.py                       # dist/meddenoise_multimodal_denoising_v<version>.zip
    python scripts/package_bundle.py --output_dir dist --name multimodal_denoising
    python scripts/package_bundle.py --no_weights --weights_url https://example.org/releases/v0.1.0
    python scripts/package_bundle.py --bundle my_bundle --record_hashes   # after training: sha256 into large_files.yml

The zip holds one folder, ``meddenoise_<name>/``, with LICENSE, large_files.yml (sha256 of each weight file), configs/,
docs/, scripts/ and the weights — no caches, runs, evaluation outputs or data. The check extracts it with the same safe
extraction users get (``--bundle x.zip`` in scripts/denoise.py and the Slicer module), loads it, denoises a real CT
slice shipped in pydicom-data and compares the result with the bundle folder's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import zipfile
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

import numpy as np  # noqa: E402

from scripts.bundle_archive import extract_bundle, file_hash, pack_bundle, record_hashes  # noqa: E402
from scripts.data import embedded_datalist  # noqa: E402
from scripts.engine import denoise_volume, load_bundle  # noqa: E402
from scripts.errors import BundleError, MedDenoiseError  # noqa: E402
from scripts.image_io import read_image  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="package_bundle.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--bundle", default=str(BUNDLE), help="bundle folder (default: this repository's bundle/)")
    parser.add_argument("--output_dir", default="dist", help="where the zip goes (default: dist)")
    parser.add_argument("--name", default="multimodal_denoising", help="zoo name: task + data type")
    parser.add_argument("--no_weights", action="store_true", help="leave the weights out; users fetch them by url")
    parser.add_argument(
        "--weights_url", default=None, help="base URL the weight files are published under (default: large_files.yml's)"
    )
    parser.add_argument("--skip_check", action="store_true", help="do not load the zip and run inference")
    parser.add_argument(
        "--record_hashes",
        action="store_true",
        help="only write the sha256 of the bundle's weight files into its large_files.yml (after training or export)",
    )
    return parser.parse_args(argv)


def check_release(zip_path: Path, bundle_dir: Path) -> float:
    """Load the zip in a fresh cache folder, denoise a real CT slice and return the largest difference from the
    bundle folder's result (native units); raises :class:`BundleError` when the zip's model behaves differently."""
    ct = read_image(embedded_datalist()["test"][0]["image"]).array
    with tempfile.TemporaryDirectory(prefix="meddenoise_check_") as fresh:
        released = load_bundle(extract_bundle(zip_path, cache_dir=fresh), device="cpu")
        from_zip = denoise_volume(ct, released, float_output=True)
    from_folder = denoise_volume(ct, load_bundle(bundle_dir, device="cpu"), float_output=True)
    if from_zip.shape != ct.shape or not np.isfinite(from_zip).all():
        raise BundleError(f"{zip_path}: the released model gave shape {from_zip.shape} for {ct.shape} or NaN/Inf")
    difference = float(np.abs(from_zip - from_folder).max())
    if difference > 1e-3 * float(np.ptp(ct)):
        raise BundleError(f"{zip_path}: the released model differs from the bundle folder's by {difference}")
    return difference


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.record_hashes:
            for entry in record_hashes(args.bundle):
                print(f"{entry['path']}: sha256 {entry.get('hash_val', '(file absent)')}")
            return 0
        zip_path = pack_bundle(
            args.bundle, args.output_dir, args.name, include_weights=not args.no_weights, weights_url=args.weights_url
        )
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
        print(f"{zip_path}: {len(names)} files, {zip_path.stat().st_size / 1e6:.2f} MB, sha256 {file_hash(zip_path)}")
        if args.no_weights or args.skip_check:
            with tempfile.TemporaryDirectory(prefix="meddenoise_check_") as fresh:
                extract_bundle(zip_path, cache_dir=fresh)
            print("checked: the zip extracts safely (inference not run: no weights inside or --skip_check)")
        else:
            difference = check_release(zip_path, Path(args.bundle))
            print(
                f"checked: loaded from a fresh folder; a real CT slice denoised, max |zip - folder| = {difference:.3g}"
            )
    except MedDenoiseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
