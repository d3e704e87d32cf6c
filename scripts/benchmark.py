"""Benchmark the bundle's DAE against classical denoisers on the test split of real images.

    python scripts/benchmark.py --data embedded --out benchmark_output/embedded
    python scripts/benchmark.py --data ../shared/data --out benchmark_output/shared --max-slices 4 --crop 256
    python scripts/benchmark.py --data ../shared/data --split leave-source-out --out benchmark_output/unseen \
        --methods noisy,bm3d,ffdnet,dae --max-slices 4 --crop 256

Every noise setting corrupts the same clean slices with noise drawn from ``--seed``, so two runs give the same table.
Writes ``OUT/results.json`` (summary rows overall and per modality, plus every slice's scores), ``OUT/results.md``
(a table per metric; with ``--split leave-source-out`` also per held-out source, the flat-region check and the DAE's
margin over BM3D per modality and source), ``OUT/psnr_vs_noise.png`` and ``OUT/figures/<modality>_<k>_<noise>.png`` (clean / noisy / each
method / DAE residual at full resolution, with zoomed insets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from scripts.atomic import write_atomic  # noqa: E402
from scripts.baselines import BASELINES, Baseline  # noqa: E402
from scripts.data import (  # noqa: E402
    FLAT_REGION_CHECK,
    LEAVE_SOURCE_OUT,
    SPLIT_NAMES,
    center_crop,
    load_slices,
    make_datalist,
    noisy_pairs,
    under,
)
from scripts.engine import ENSEMBLE_SIZES, LoadedModel, load_bundle  # noqa: E402
from scripts.errors import ImageReadError, MedDenoiseError  # noqa: E402
from scripts.metrics import image_metrics  # noqa: E402
from scripts.noise import DEFAULT_SETTINGS, noise_sigma, parse_noise  # noqa: E402
from scripts.report import (  # noqa: E402
    plot_comparison,
    plot_psnr_vs_noise,
    results_markdown,
    short_label,
    summarize,
)
from scripts.slices import evenly_spaced  # noqa: E402

METHODS = ("noisy", *BASELINES, "dae")


def noisy(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """The noisy input itself: the reference column every denoiser must beat."""
    return image


def dae_denoiser(model: LoadedModel, views: int = 1) -> Baseline:
    """The bundle's network with the baselines' signature (sigma unused: the DAE is blind), averaged over ``views``
    flips/rotations (:meth:`scripts.engine.LoadedModel.predict`, in the model's precision).

    A 2.5D network (``2k+1`` input channels) sees the slice in every channel, as the engine does at a volume's edge:
    benchmark slices come without neighbours.
    """

    def dae(image: np.ndarray, sigma: float | None = None) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).to(model.device)
        batch = tensor.expand(1, 2 * model.context + 1, *tensor.shape)  # (1, C, H, W)
        with torch.inference_mode():
            output = model.predict(batch, views)[0, 0].cpu().numpy()
        return np.clip(output, 0.0, 1.0).astype(np.float32)

    return dae


def parse_methods(names: Sequence[str]) -> list[str]:
    """Method names from ``["noisy,median", "bm3d"]``-style arguments, in the order given, without repeats."""
    methods = list(dict.fromkeys(n.strip() for name in names for n in name.split(",") if n.strip()))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise MedDenoiseError(
            f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METHODS)}"
        )
    return methods


def _by_modality(items: Sequence[dict]) -> dict[str, list[dict]]:
    return _by_key(items, "modality")


def _by_key(items: Sequence[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item.get(key) or "unknown", []).append(item)
    return groups


def source_name(source: str) -> str:
    """The held-out source folder (:data:`scripts.data.LEAVE_SOURCE_OUT`) that ``source`` lies in, else ``source``."""
    return next((folder for folder in LEAVE_SOURCE_OUT if under(source, [folder])), source)


def is_flat_region_check(item: dict) -> bool:
    """Whether a slice comes from the flat-region check's image (:data:`scripts.data.FLAT_REGION_CHECK`)."""
    return Path(item.get("image_path", item.get("image", ""))).as_posix().endswith(FLAT_REGION_CHECK)


def benchmark_slices(
    data: str, max_slices: int | None, split: str = "by-group", crop: int | None = None, blank_std: float = 1e-3
) -> list[dict]:
    """[0, 1] slices of the data's test split; with ``max_slices``, at most that many per modality (``by-group``) or per
    held-out source (``leave-source-out``, which always keeps the flat-region check's slice), evenly spread over its
    images and their slices. Slices whose central ``crop`` is blank (standard deviation below ``blank_std``; the
    flat-region check's brain has 0.006) are left out: every method scores the same on a black crop of a mammogram's
    background, and clipped noise there flatters a network that learnt to remove the offset."""
    items = make_datalist(data, split=split)["test"]
    if not items:
        raise ImageReadError(
            f"{data}: the test split is empty; every source folder needs images of at least three patients/series"
        )
    if split != "by-group":
        items = [{**item, "source": source_name(item["source"])} for item in items]
    key = "modality" if split == "by-group" else "source"
    chosen = [group[i] for group in _by_key(items, key).values() for i in evenly_spaced(len(group), max_slices)]
    chosen += [item for item in items if is_flat_region_check(item) and item not in chosen]
    slices = load_slices(chosen, max_slices_per_volume=max_slices)
    slices = [item for item in slices if center_crop(item["label"], crop).std() >= blank_std]
    kept = [group[i] for group in _by_key(slices, key).values() for i in evenly_spaced(len(group), max_slices)]
    kept_ids = {id(item) for item in kept}
    return kept + [item for item in slices if is_flat_region_check(item) and id(item) not in kept_ids]


def machine_info(device: torch.device | str) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
    }


def _file_name(spec: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", spec).strip("_")


def run_benchmark(
    data: str,
    out: str | os.PathLike,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    methods: Sequence[str] = METHODS,
    bundle: str | None = None,
    max_slices: int | None = None,
    seed: int = 0,
    crop: int | None = 512,
    figure_slices: int = 1,
    views: int = 1,
    split: str = "by-group",
) -> dict:
    """Score every method on every noise setting; write results.json, results.md and the figures; return the results.

    Args:
        data: a folder of images (split by patient/series) or ``embedded`` (images shipped in pip packages).
        out: output folder (created).
        settings: noise spec strings.
        methods: names from :data:`METHODS`.
        bundle: bundle folder of the DAE (default: this bundle); loaded only when ``dae`` is among the methods.
        max_slices: at most this many test slices per modality (None = all).
        seed: noise seed; the same seed gives the same noisy slices and so the same scores.
        crop: central crop size in pixels (None/0 = full slices); BM3D time grows with the area.
        figure_slices: slices per modality drawn as comparison figures (at every setting).
        views: the DAE's self-ensemble size (1, 2, 4 or 8 flips/rotations averaged).
        split: ``by-group`` (the test split of every source) or ``leave-source-out`` (whole sources never trained
            on, :data:`scripts.data.LEAVE_SOURCE_OUT`; ``data`` must be the shared data set's root).
    """
    methods = parse_methods(methods)
    settings = [parse_noise(spec).spec for spec in settings]  # canonical spelling; raises on a bad spec
    if max_slices is not None and max_slices < 1:
        raise MedDenoiseError(f"--max-slices {max_slices} must be at least 1 (or left out for all test slices)")
    if crop and crop < 32:
        raise MedDenoiseError(
            f"--crop {crop} is too small for the metrics' and BM3D's windows; use 32 or more (0 = none)"
        )
    model = load_bundle(bundle) if "dae" in methods else None
    denoisers: dict[str, Baseline] = {"noisy": noisy, **BASELINES}
    if model is not None:
        denoisers["dae"] = dae_denoiser(model, views)
    if split not in SPLIT_NAMES:
        raise MedDenoiseError(f"--split {split}: choose one of {', '.join(SPLIT_NAMES)}")
    slices = benchmark_slices(data, max_slices, split, crop)
    drawn = figure_names(slices, figure_slices)
    out = Path(out)
    records = []
    with tqdm(total=len(settings) * len(methods) * len(slices), desc="benchmark", unit="slice") as bar:
        for spec in settings:
            sigma = noise_sigma(spec)
            pairs = noisy_pairs(slices, spec, seed=seed, crop=crop)
            figures: dict[int, dict] = {index: {} for index in drawn}
            for method in methods:
                bar.set_postfix_str(f"{method}, {short_label(spec)}")
                for index, pair in enumerate(pairs):
                    image, clean = pair["image"][0], pair["label"][0]
                    start = time.perf_counter()
                    denoised = denoisers[method](image, sigma)
                    seconds = time.perf_counter() - start
                    scores = image_metrics(denoised, clean)
                    records.append(
                        {
                            "noise": spec,
                            "method": method,
                            "modality": pair["modality"],
                            "source": pair["source"],
                            "flat_region_check": is_flat_region_check(pair),
                            "image": Path(pair["image_path"]).name,
                            "slice": pair["slice"],
                            **scores,
                            # Brighter (+) or darker (-) on average than the clean slice: a blind network that takes
                            # bright tissue for offset noise returns it too dark (the experiment log, session 17).
                            "mean_error": float(np.mean(denoised) - np.mean(clean)),
                            "seconds": seconds,
                        }
                    )
                    if index in figures:
                        figures[index][method] = (denoised, scores)
                    bar.update()
            for index, outputs in figures.items():
                _draw(pairs[index], spec, outputs, out / "figures" / f"{drawn[index]}_{_file_name(spec)}.png")
    results = {
        "rows": summarize(records),
        "per_modality": {m: summarize(group) for m, group in _by_modality(records).items()},
        "per_source": {s: summarize(group) for s, group in _by_key(records, "source").items()},
        "flat_region_check": summarize([r for r in records if r["flat_region_check"]]),
        "data": {
            "source": str(data),
            "split": "test" if split == "by-group" else split,
            "images": len({item["image_path"] for item in slices}),
            "slices": len(slices),
            "slices_per_modality": {m: len(group) for m, group in _by_modality(slices).items()},
            "crop": crop or None,
            "seed": seed,
            "max_slices": max_slices,
        },
        "bundle_version": model.version if model is not None else None,
        "dae_views": views,
        "machine": machine_info(model.device if model is not None else "cpu"),
        "per_slice": records,
    }
    write_atomic(out / "results.json", lambda p: p.write_text(json.dumps(results, indent=1)))
    write_atomic(out / "results.md", lambda p: p.write_text(results_markdown(results)))
    plot_psnr_vs_noise(results["rows"], out / "psnr_vs_noise.png")
    return results


def figure_names(slices: Sequence[dict], per_modality: int) -> dict[int, str]:
    """``{slice index: "CT_0"}`` for the first ``per_modality`` slices of each modality (the ones drawn)."""
    names, counts = {}, {}
    for index, item in enumerate(slices):
        modality = item.get("modality") or "unknown"
        counts[modality] = counts.get(modality, -1) + 1
        if counts[modality] < per_modality:
            names[index] = f"{modality}_{counts[modality]}"
    return names


def _draw(pair: dict, spec: str, outputs: dict[str, tuple[np.ndarray, dict]], path: Path) -> None:
    modality = pair.get("modality") or "unknown"
    scores = {method: score for method, (_, score) in outputs.items()}
    denoised = {method: image for method, (image, _) in outputs.items() if method != "noisy"}
    plot_comparison(
        pair["label"][0],
        pair["image"][0],
        denoised,
        scores,
        path,
        title=f"{modality} · {Path(pair['image_path']).name} slice {pair['slice']} · {spec}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", default="embedded", help="folder of images (test split by patient) or 'embedded'")
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md and figures")
    parser.add_argument("--noise", nargs="+", default=list(DEFAULT_SETTINGS), metavar="SPEC", help="noise settings")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(METHODS),
        metavar="NAME",
        help=f"comma/space separated: {','.join(METHODS)}",
    )
    parser.add_argument("--bundle", default=None, help="bundle folder of the DAE (default: this repository's bundle)")
    parser.add_argument(
        "--split",
        choices=SPLIT_NAMES,
        default="by-group",
        help="by-group: each source's test patients; leave-source-out: whole sources never trained on",
    )
    parser.add_argument(
        "--max-slices", type=int, default=None, help="at most N test slices per modality (leave-source-out: per source)"
    )
    parser.add_argument("--seed", type=int, default=0, help="noise seed (same seed, same numbers)")
    parser.add_argument("--crop", type=int, default=512, help="central crop in pixels, 0 = full slices (default 512)")
    parser.add_argument("--figure-slices", type=int, default=1, help="slices per modality drawn as figures")
    parser.add_argument(
        "--views",
        type=int,
        choices=ENSEMBLE_SIZES,
        default=1,
        metavar="N",
        help="DAE views averaged (1, 2, 4, 8)",
    )
    args = parser.parse_args(argv)
    try:
        results = run_benchmark(
            args.data,
            args.out,
            args.noise,
            args.methods,
            args.bundle,
            args.max_slices,
            args.seed,
            args.crop,
            args.figure_slices,
            args.views,
            args.split,
        )
    except MedDenoiseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results_markdown(results).split("\n## SSIM")[0])
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, psnr_vs_noise.png and figures/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
