#!/usr/bin/env python
"""MedDenoise demo: real CT, MR and X-ray images shipped inside pip packages, noised, denoised by the shipped model.

For each image of the embedded test split (never used in training) it adds seeded noise, denoises with the bundle's
slice engine, prints PSNR/SSIM before and after (and the median filter's, the seeds' classical reference), and writes
a side-by-side PNG (clean | noisy | median | MedDenoise | residual) to the output folder.

    python scripts/demo.py [--noise SPEC] [--out demo_output] [--bundle DIR] [--crop 512]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

import numpy as np  # noqa: E402
from scipy.ndimage import median_filter  # noqa: E402

from scripts.atomic import write_atomic  # noqa: E402
from scripts.data import center_crop, embedded_datalist, load_slices  # noqa: E402
from scripts.engine import denoise_volume, load_bundle  # noqa: E402
from scripts.errors import MedDenoiseError  # noqa: E402
from scripts.intensity import IntensityWindow  # noqa: E402
from scripts.metrics import image_metrics  # noqa: E402
from scripts.noise import parse_noise  # noqa: E402

UNIT_WINDOW = IntensityWindow(0.0, 1.0)  # the demo's images are already scaled to [0, 1]


def save_comparison(path: Path, title: str, panels: dict[str, np.ndarray]) -> None:
    """One row of greyscale panels at native resolution, each titled with its caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height, width = next(iter(panels.values())).shape
    figure, axes = plt.subplots(1, len(panels), figsize=(len(panels) * width / 100, height / 100 + 0.6), dpi=100)
    for axis, (caption, image) in zip(axes, panels.items(), strict=True):
        is_residual = caption.startswith("residual")
        axis.imshow(
            image,
            cmap="coolwarm" if is_residual else "gray",
            vmin=-0.2 if is_residual else 0,
            vmax=0.2 if is_residual else 1,
        )
        axis.set_title(caption, fontsize=9)
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    write_atomic(path, figure.savefig)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", default="gaussian:factor=0.1,mean=0,std=1", help="noise spec (default: the seed's)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="folder for the PNGs")
    parser.add_argument("--bundle", default=None, help="bundle folder (default: the shipped one)")
    parser.add_argument("--crop", type=int, default=512, help="central crop of large radiographs (pixels)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        noise = parse_noise(args.noise)
        model = load_bundle(args.bundle)
        slices = load_slices(embedded_datalist()["test"], progress=False)
    except MedDenoiseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    noise.set_random_state(seed=args.seed)
    print(f"model: {model.source} v{model.version} on {model.device}; noise: {noise.spec}")
    print(f"{'image':28s} {'size':>9s}  {'PSNR noisy/median/DAE (dB)':>28s}  {'SSIM noisy/median/DAE':>23s}  {'s':>5s}")
    for item in slices:
        clean = center_crop(item["label"][0], args.crop)
        noisy = noise(clean)
        started = time.perf_counter()
        denoised = denoise_volume(noisy, model, window=UNIT_WINDOW)
        seconds = time.perf_counter() - started
        median = median_filter(noisy, size=3)
        scores = [image_metrics(image, clean) for image in (noisy, median, denoised)]
        name = f"{item['modality']} {Path(item['image_path']).stem}"
        size = "x".join(map(str, clean.shape))
        psnr = "/".join(f"{s['psnr']:.2f}" for s in scores)
        ssim = "/".join(f"{s['ssim']:.3f}" for s in scores)
        print(f"{name:28s} {size:>9s}  {psnr:>28s}  {ssim:>23s}  {seconds:5.2f}")
        png = args.out / f"demo_{item['modality']}_{Path(item['image_path']).stem}.png"
        save_comparison(
            png,
            f"{name} — {noise.spec}",
            {
                "clean": clean,
                f"noisy {scores[0]['psnr']:.1f} dB": noisy,
                f"median 3x3 {scores[1]['psnr']:.1f} dB": median,
                f"MedDenoise {scores[2]['psnr']:.1f} dB": denoised,
                "residual (noisy - denoised)": noisy - denoised,
            },
        )
    print(f"pictures: {args.out}/demo_*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
