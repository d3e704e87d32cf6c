"""Evaluation of a trained network on the test split, one MONAI ``SupervisedEvaluator`` run per noise setting."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedEvaluator
from monai.handlers import IgniteMetricHandler, MeanSquaredError, PeakSignalToNoiseRatio, from_engine
from tqdm import tqdm

from .atomic import atomic_file, write_atomic
from .data import noisy_pairs
from .metrics import image_metrics, ssim_metric


def evaluate_settings(
    network: torch.nn.Module,
    slices: Sequence[dict],
    settings: Sequence[str],
    output_dir: str,
    device: torch.device | str = "cpu",
    seed: int = 0,
    crop: int | None = 512,
) -> list[dict]:
    """PSNR, SSIM and MSE of ``network`` and of the noisy input for each noise setting on fixed seeded pairs.

    Writes ``output_dir/evaluation.json`` and ``evaluation.csv`` (one row per setting) and prints a table.
    """
    network = network.to(device).eval()
    rows = []
    for spec in tqdm(settings, desc="evaluating", unit="setting"):
        pairs = noisy_pairs(slices, spec, seed=seed, crop=crop)
        noisy = [image_metrics(p["image"], p["label"]) for p in pairs]
        smallest = min(min(p["label"].shape[-2:]) for p in pairs)
        evaluator = SupervisedEvaluator(
            device=torch.device(device),
            val_data_loader=DataLoader(
                Dataset([{"image": p["image"], "label": p["label"]} for p in pairs]), batch_size=1
            ),
            network=network,
            key_val_metric={
                "psnr": PeakSignalToNoiseRatio(max_val=1.0, output_transform=from_engine(["pred", "label"]))
            },
            additional_metrics={
                "ssim": IgniteMetricHandler(
                    metric_fn=ssim_metric(smallest, smallest), output_transform=from_engine(["pred", "label"])
                ),
                "mse": MeanSquaredError(output_transform=from_engine(["pred", "label"])),
            },
        )
        evaluator.run()
        scores = evaluator.state.metrics
        rows.append(
            {
                "noise": spec,
                "n": len(pairs),
                "psnr": float(scores["psnr"]),
                "ssim": float(scores["ssim"]),
                "mse": float(scores["mse"]),
                "noisy_psnr": float(np.mean([m["psnr"] for m in noisy])),
                "noisy_ssim": float(np.mean([m["ssim"] for m in noisy])),
                "noisy_mse": float(np.mean([m["mse"] for m in noisy])),
            }
        )
    out = Path(output_dir)
    write_atomic(out / "evaluation.json", lambda path: path.write_text(json.dumps(rows, indent=1)))
    with atomic_file(out / "evaluation.csv") as partial, open(partial, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{'noise':40s} {'noisy PSNR':>10s} {'DAE PSNR':>9s} {'noisy SSIM':>10s} {'DAE SSIM':>9s}")
    for row in rows:
        print(
            f"{row['noise']:40s} {row['noisy_psnr']:10.2f} {row['psnr']:9.2f} {row['noisy_ssim']:10.3f} {row['ssim']:9.3f}"
        )
    return rows
