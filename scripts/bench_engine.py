#!/usr/bin/env python
"""Speed and memory of the slice engine on this machine, measured on a real 512 x 512 int16 CT slice.

    python scripts/bench_engine.py [--slices 300] [--batch-size 8] [--threads N] [--device cpu] [--bundle DIR]
        [--self-ensemble 2]

Prints: the machine's dense-matmul GFLOP/s; the network's FLOPs per slice and achieved GFLOP/s; NCHW vs channels-last
and batch sizes (interleaved, best of several rounds, so other load on the machine hits each alike); seconds per
512 x 512 slice (also with ``--self-ensemble`` views) and per 512 x 512 x N int16 volume through ``denoise_volume``;
BM3D on the same slice (the classical method a careful user would pick instead) and how many times faster the engine
is; peak resident memory against the
budget of 3x the volume's float32 size plus the model.
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from collections.abc import Callable, Hashable
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from tqdm import tqdm  # noqa: E402

from scripts.baselines import bm3d  # noqa: E402
from scripts.data import embedded_datalist  # noqa: E402
from scripts.engine import ENSEMBLE_SIZES, denoise_volume, load_bundle  # noqa: E402
from scripts.image_io import read_image  # noqa: E402
from scripts.intensity import IntensityWindow  # noqa: E402

MB = 2**20


def best_seconds(candidates: dict[Hashable, Callable[[], object]], rounds: int) -> dict[Hashable, float]:
    """Best wall time of each candidate over ``rounds`` interleaved rounds (after one warm-up call each)."""
    best = dict.fromkeys(candidates, float("inf"))
    for run in candidates.values():
        run()
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def matmul_gflops(device: torch.device, size: int = 2048, rounds: int = 5) -> float:
    a, b = torch.rand(size, size, device=device), torch.rand(size, size, device=device)
    seconds = best_seconds({"mm": lambda: torch.mm(a, b).sum().item()}, rounds)["mm"]
    return 2 * size**3 / seconds / 1e9


def network_flops(network: torch.nn.Module, batch: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(batch)
    return counter.get_total_flops()


def ct_volume(slices: int) -> np.ndarray:
    """``slices`` x 512 x 512 int16 HU: the real CQ500 CT slice, shifted by a row per slice so no two are alike."""
    plane = read_image(embedded_datalist()["test"][0]["image"]).array[0]
    volume = np.empty((slices, *plane.shape), dtype=np.int16)
    for k in range(slices):
        volume[k] = np.roll(plane, k, axis=0)
    return volume


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300, help="slices of the benchmark volume (default 300)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the engine's (BATCH_PIXELS)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per comparison (best is kept)")
    parser.add_argument(
        "--self-ensemble", type=int, choices=ENSEMBLE_SIZES, default=1, metavar="N", help="also time N views per slice"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_bundle(args.bundle, device=args.device)
    network, device = model.network, model.device
    print(f"machine: {psutil.cpu_count(logical=False)} cores, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {device}")  # fmt: skip
    peak_matmul = matmul_gflops(device)
    print(f"dense matmul 2048x2048 float32: {peak_matmul:.1f} GFLOP/s")

    volume = ct_volume(args.slices)
    slices = torch.from_numpy(volume[:8, None].astype(np.float32) / 4096).to(device)  # a real-content batch
    slices = slices.expand(-1, 2 * model.context + 1, -1, -1).contiguous(memory_format=torch.channels_last)
    flops = network_flops(network, slices[:1])
    parameters = sum(p.numel() for p in network.parameters())
    print(f"network: {type(network).__name__}, {parameters / 1e3:.0f}k parameters, {flops / 1e9:.2f} GFLOP per "
          "512x512 slice")  # fmt: skip

    # The volume first: ru_maxrss is the process's lifetime peak, and the batch-size comparison below uses more.
    baseline_rss = psutil.Process().memory_info().rss  # imports, model and the int16 volume itself
    view_counts = sorted({1, args.self_ensemble})
    one_slice = best_seconds(
        {views: (lambda v=views: denoise_volume(volume[:1], model, views=v)) for views in view_counts}, args.rounds
    )
    for views, seconds in one_slice.items():
        print(f"engine, one 512x512 int16 slice, {views} view(s): {seconds:.3f} s")
    plane = IntensityWindow.from_data(volume[0]).forward(volume[0])  # BM3D works on the same [0, 1] scale
    start = time.perf_counter()
    bm3d(plane)  # sigma estimated from the slice, as a user without the true sigma runs it
    bm3d_seconds = time.perf_counter() - start
    faster = ", ".join(f"{bm3d_seconds / seconds:.0f}x with {views} view(s)" for views, seconds in one_slice.items())
    print(f"BM3D, the same slice: {bm3d_seconds:.1f} s: the engine is {faster} faster")
    with tqdm(total=len(volume), desc="512x512 volume", unit="slice") as bar:
        start = time.perf_counter()
        denoise_volume(volume, model, batch_size=args.batch_size, progress=lambda done, _: bar.update(done - bar.n))
        volume_seconds = time.perf_counter() - start
    print(f"engine, 512x512x{len(volume)} int16 volume: {volume_seconds:.1f} s "
          f"({volume_seconds / len(volume):.3f} s/slice)")  # fmt: skip
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    budget = 3 * volume.size * 4 + sum(p.numel() * p.element_size() for p in network.parameters())
    print(f"peak resident memory: {peak_rss / MB:.0f} MB in all; {(peak_rss - baseline_rss) / MB:.0f} MB above the "
          f"loaded model and int16 volume; budget 3x float32 volume + model = {budget / MB:.0f} MB")  # fmt: skip

    nchw_network = copy.deepcopy(network).to(memory_format=torch.contiguous_format)
    nchw_slices = slices.contiguous()
    sizes = (1, 2, 4, 8)
    with torch.inference_mode():
        candidates = {"NCHW batch 2": lambda: nchw_network(nchw_slices[:2])}
        candidates.update({f"channels-last batch {n}": (lambda n=n: network(slices[:n])) for n in sizes})
        seconds = best_seconds(candidates, args.rounds)
    per_slice = {name: value / int(name.rsplit(" ", 1)[1]) for name, value in seconds.items()}
    for name, value in per_slice.items():
        gflops = flops / value / 1e9
        print(f"network forward, {name}: {value:.3f} s/slice = {gflops:.1f} GFLOP/s ({100 * gflops / peak_matmul:.0f}% "
              "of matmul)")  # fmt: skip
    print(f"channels-last speed-up over NCHW: {per_slice['NCHW batch 2'] / per_slice['channels-last batch 2']:.2f}x")


if __name__ == "__main__":
    main()
