"""Benchmark of issue 9: the noise-level readout, a model trained on noisy images only, and adapt-to-this-scan.

    python scripts/bench_selfsupervised.py --data ../shared/data --max-slices 4 --crop 256 \\
        --selfsupervised bundle/models/model_selfsupervised.pt --adapt-seconds 60

Prints three tables on the data's test split (the same slices as ``scripts/benchmark.py``):

1. noise level: mean |error| of ``skimage.restoration.estimate_sigma`` and of ``scripts.noise_level`` against the
   true sigma, per Gaussian setting of the default set;
2. PSNR per Gaussian setting: noisy input, NL-means (told the true sigma), the self-supervised model and the shipped
   supervised model, with the self-supervised model's margin over NL-means and its gap to the supervised model;
3. adapt-to-this-scan on noise the shipped model never saw (``--unseen-noise``, default speckle and noise correlated
   over pixels): PSNR of the shipped model alone and after ``--adapt-seconds`` of blind-spot fine-tuning on each noisy
   slice, per modality, with the blind-spot span the adaptation chose.

``--out FILE`` also writes every figure as JSON (atomically); ``--pictures DIR`` a side-by-side PNG of each adapted
scan (clean, noisy, shipped, adapted and what the adapted model removed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.append(str(BUNDLE.parent))  # the research package, whose networks the research objectives train

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from skimage.restoration import estimate_sigma  # noqa: E402
from tqdm import tqdm  # noqa: E402

from scripts.atomic import write_atomic  # noqa: E402
from scripts.baselines import nlmeans  # noqa: E402
from scripts.data import noisy_pairs  # noqa: E402
from scripts.engine import ENSEMBLE_SIZES, LoadedModel, denoise_volume, load_bundle  # noqa: E402
from scripts.errors import BundleError, MedDenoiseError  # noqa: E402
from scripts.intensity import IntensityWindow  # noqa: E402
from scripts.metrics import image_metrics  # noqa: E402
from scripts.noise import DEFAULT_SETTINGS, noise_sigma  # noqa: E402
from scripts.noise_level import slice_noise_sigma  # noqa: E402
from scripts.report import plot_comparison  # noqa: E402
from scripts.selfsupervised import adapt_model  # noqa: E402

GAUSSIAN_SETTINGS = [spec for spec in DEFAULT_SETTINGS if spec.startswith("gaussian")]
#: Per self-supervised objective: the training configs (relative to the repository root) in the order they are
#: layered (the last one's network counts), and whether the network has a blind spot (the engine then blends its
#: output with the noisy pixel). All but the shipped blind spot are research objectives (research/configs/).
_SELFSUPERVISED = ("bundle/configs/train.yaml", "bundle/configs/train_selfsupervised.yaml")
OBJECTIVES = {
    "blind-spot": (_SELFSUPERVISED, True),
    "recorrupted": ((*_SELFSUPERVISED, "research/configs/recorrupted.yaml"), False),
    "sure": ((*_SELFSUPERVISED, "research/configs/sure.yaml"), True),
    "blind-spot-network": ((*_SELFSUPERVISED, "research/configs/blind_spot_network.yaml"), True),
}
#: Benchmark slices are already on the [0, 1] scale.
UNIT_WINDOW = IntensityWindow(0.0, 1.0)


def _benchmark_script():
    """``scripts/benchmark.py`` (a runnable file, not a package): its test-split slices are the ones used here too."""
    spec = importlib.util.spec_from_file_location("benchmark", Path(__file__).resolve().parent / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_selfsupervised(checkpoint: Path, device: torch.device, objective: str = "blind-spot") -> LoadedModel:
    """The checkpoint's weights in the network of the training configs of ``objective`` (:data:`OBJECTIVES`)."""
    configs, blind_spot = OBJECTIVES[objective]
    if not checkpoint.is_file():
        raise BundleError(
            f"{checkpoint}: no self-supervised checkpoint; train one with {' + '.join(configs)} (see README)"
        )
    parser = ConfigParser()
    parser.read_config([str(BUNDLE.parent / path) for path in configs])
    # This repository's own training configs, research ones included, are trusted: MONAI builds their network (a
    # bundle from elsewhere goes through the engine's allow-list instead, scripts.engine.build_network).
    network = parser.get_parsed_content("network_def")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    context = getattr(network, "in_channels", 1) // 2
    return LoadedModel(
        network.to(device).eval(), device, context=context, source=str(checkpoint), blind_spot=blind_spot
    )


def denoise(model: LoadedModel, image: np.ndarray, views: int = 1) -> np.ndarray:
    return denoise_volume(image, model, UNIT_WINDOW, float_output=True, views=views)


def mean_psnr(outputs: Sequence[np.ndarray], pairs: Sequence[dict]) -> float:
    return float(
        np.mean([image_metrics(out, pair["label"][0])["psnr"] for out, pair in zip(outputs, pairs, strict=True)])
    )


def noise_level_table(slices: Sequence[dict], crop: int, seed: int) -> list[dict]:
    rows = []
    for spec in GAUSSIAN_SETTINGS:
        pairs, sigma = noisy_pairs(slices, spec, seed=seed, crop=crop), noise_sigma(spec)
        errors = {
            name: float(np.mean([abs(estimator(p["image"][0].astype(np.float64)) / sigma - 1) for p in pairs]))
            for name, estimator in (("estimate_sigma", estimate_sigma), ("noise_level", slice_noise_sigma))
        }
        rows.append({"noise": spec, "sigma": sigma, **errors})
    print(f"\nnoise level: mean |relative error| over {len(slices)} test slices")
    print(f"{'noise':36s} {'sigma':>6s} {'estimate_sigma':>15s} {'noise_level':>12s}")
    for row in rows:
        print(f"{row['noise']:36s} {row['sigma']:6.3f} {row['estimate_sigma']:15.1%} {row['noise_level']:12.1%}")
    return rows


def gaussian_table(
    slices: Sequence[dict], crop: int, seed: int, selfsupervised: LoadedModel, shipped: LoadedModel, views: int = 1
) -> list[dict]:
    rows = []
    for spec in tqdm(GAUSSIAN_SETTINGS, desc="Gaussian settings", unit="setting"):
        pairs, sigma = noisy_pairs(slices, spec, seed=seed, crop=crop), noise_sigma(spec)
        noisy = [p["image"][0] for p in pairs]
        row = {
            "noise": spec,
            "noisy": mean_psnr(noisy, pairs),
            "nlmeans": mean_psnr([nlmeans(image, sigma) for image in noisy], pairs),
            "selfsupervised": mean_psnr([denoise(selfsupervised, image, views) for image in noisy], pairs),
            "supervised": mean_psnr([denoise(shipped, image, views) for image in noisy], pairs),
        }
        rows.append(row)
    print(f"\nPSNR (dB), mean over {len(slices)} test slices, {views} view(s); NL-means is told the true sigma")
    header = f"{'noise':36s} {'noisy':>6s} {'NL-means':>9s} {'self-sup':>9s} {'supervised':>11s} {'ss-NLM':>7s} {'ss-sup':>7s}"
    print(header)
    for r in rows:
        print(
            f"{r['noise']:36s} {r['noisy']:6.2f} {r['nlmeans']:9.2f} {r['selfsupervised']:9.2f} {r['supervised']:11.2f}"
            f" {r['selfsupervised'] - r['nlmeans']:+7.2f} {r['selfsupervised'] - r['supervised']:+7.2f}"
        )
    beaten = sum(r["selfsupervised"] > r["nlmeans"] for r in rows)
    print(f"self-supervised beats NL-means at {beaten} of {len(rows)} Gaussian settings")
    return rows


def adaptation_table(
    slices: Sequence[dict],
    crop: int,
    seed: int,
    shipped: LoadedModel,
    noise: str,
    seconds: float,
    per_modality: int,
    views: int = 1,
    pictures: Path | None = None,
) -> list[dict]:
    chosen = []
    for modality in sorted({s["modality"] for s in slices}):
        chosen += [s for s in slices if s["modality"] == modality][:per_modality]
    rows = []
    for pair in tqdm(noisy_pairs(chosen, noise, seed=seed, crop=crop), desc="adapting", unit="scan"):
        noisy, clean = pair["image"][0], pair["label"][0]
        start = time.monotonic()
        adapted = adapt_model(shipped, noisy, UNIT_WINDOW, seconds=seconds, seed=seed)
        outputs = {"shipped": denoise(shipped, noisy, views), "adapted": denoise(adapted, noisy, views)}
        scores = {name: image_metrics(image, clean) for name, image in {"noisy": noisy, **outputs}.items()}
        if pictures is not None:
            name = f"adapt_{noise.split(':')[0]}_{pair['modality']}_{Path(pair['image_path']).stem}.png"
            title = f"adapt to this scan: {noise}, {seconds:g} s ({pair['modality']})"
            plot_comparison(clean, noisy, outputs, scores, pictures / name, title, residual_of="adapted")
        rows.append(
            {
                "modality": pair["modality"],
                "image": Path(pair["image_path"]).name,
                "noisy": scores["noisy"]["psnr"],
                "shipped": scores["shipped"]["psnr"],
                "adapted": scores["adapted"]["psnr"],
                "seconds": time.monotonic() - start,
                "steps": adapted.metadata["adaptation"]["steps"],
                "span": adapted.metadata["adaptation"]["span"],
                "kept": adapted.metadata["adaptation"]["kept"],
            }
        )
    print(f"\nadapt to this scan: {noise} (never in the shipped model's training), {seconds:g} s budget per scan")
    print(
        f"{'modality':8s} {'image':28s} {'noisy':>6s} {'shipped':>8s} {'adapted':>8s} {'gain':>6s} {'s':>5s} {'steps':>6s}"
        f" {'span':>4s} kept"
    )
    for r in rows:
        print(
            f"{r['modality']:8s} {r['image'][:28]:28s} {r['noisy']:6.2f} {r['shipped']:8.2f} {r['adapted']:8.2f}"
            f" {r['adapted'] - r['shipped']:+6.2f} {r['seconds']:5.0f} {r['steps']:6d} {r['span']:4d} {r['kept']}"
        )
    gains = [r["adapted"] - r["shipped"] for r in rows]
    print(
        f"mean gain {np.mean(gains):+.2f} dB (min {min(gains):+.2f}) in {np.mean([r['seconds'] for r in rows]):.0f} s"
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="embedded", help="folder of images (test split by patient) or 'embedded'")
    parser.add_argument("--max-slices", type=int, default=4, help="at most N test slices per modality (default 4)")
    parser.add_argument("--crop", type=int, default=256, help="central crop in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same numbers)")
    parser.add_argument(
        "--selfsupervised",
        type=Path,
        default=BUNDLE / "models" / "model_selfsupervised.pt",
        help="checkpoint trained with train_selfsupervised.yaml (and the --objective's own config, e.g. research/configs/sure.yaml)",
    )
    parser.add_argument(
        "--objective",
        choices=sorted(OBJECTIVES),
        default="blind-spot",
        help="how the self-supervised checkpoint was trained (default blind-spot)",
    )
    parser.add_argument("--bundle", default=None, help="bundle folder of the shipped model (default: this bundle)")
    parser.add_argument(
        "--unseen-noise",
        nargs="+",
        default=["speckle:std=0.2", "correlated:std=0.1,width=1"],
        help="noise specs for the adaptation tables (default: speckle and noise correlated over pixels)",
    )
    parser.add_argument("--adapt-seconds", type=float, default=60.0, help="adaptation budget per scan (default 60)")
    parser.add_argument("--adapt-slices", type=int, default=1, help="scans adapted to per modality (default 1)")
    parser.add_argument(
        "--views",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=1,
        metavar="N",
        help="views averaged by every model",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--pictures", type=Path, default=None, help="folder for side-by-side PNGs of each adapted scan")
    args = parser.parse_args(argv)
    try:
        device = torch.device("cpu")
        shipped = load_bundle(args.bundle, device=device)
        selfsupervised = load_selfsupervised(args.selfsupervised, device, args.objective)
        slices = _benchmark_script().benchmark_slices(args.data, args.max_slices)
        results = {
            "data": args.data,
            "slices": len(slices),
            "torch_threads": torch.get_num_threads(),
            "views": args.views,
            "noise_level": noise_level_table(slices, args.crop, args.seed),
            "gaussian": gaussian_table(slices, args.crop, args.seed, selfsupervised, shipped, args.views),
            "adaptation": {
                noise: adaptation_table(
                    slices,
                    args.crop,
                    args.seed,
                    shipped,
                    noise,
                    args.adapt_seconds,
                    args.adapt_slices,
                    args.views,
                    args.pictures,
                )
                for noise in args.unseen_noise
            },
        }
    except MedDenoiseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.out:
        write_atomic(args.out, lambda path: path.write_text(json.dumps(results, indent=1)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
