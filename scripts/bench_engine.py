#!/usr/bin/env python
"""Speed and memory of the slice engine on this machine, measured on a real 512 x 512 int16 CT slice.

    python scripts/bench_engine.py [--slices 300] [--batch-size 8] [--threads N] [--device cpu] [--bundle DIR]
        [--views 2]

Prints: the machine's dense-matmul GFLOP/s in float32 and, where the engine computes in it, bfloat16; the network's
FLOPs per slice and achieved GFLOP/s; NCHW vs channels-last, batch sizes and precisions (interleaved, best of several
rounds, so other load on the machine hits each alike); seconds per 512 x 512 slice in each precision (also with
``--views``) and per 512 x 512 x N int16 volume through ``denoise_volume`` (the engine's precision);
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
from scripts.engine import ENSEMBLE_SIZES, LoadedModel, denoise_volume, load_bundle  # noqa: E402
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


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, rounds: int = 5) -> float:
    a, b = (torch.rand(size, size, device=device, dtype=dtype) for _ in range(2))
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
        "--views", type=int, choices=ENSEMBLE_SIZES, default=1, metavar="N", help="also time N views per slice"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_bundle(args.bundle, device=args.device)
    network, device = model.network, model.device
    # The engine's own precision ("auto") and float32 beside it, each a model of its own.
    models = {model.precision: model, torch.float32: load_bundle(args.bundle, device=device, precision="float32")}
    print(f"machine: {psutil.cpu_count(logical=False)} cores, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {device}, engine precision {_name(model.precision)}")  # fmt: skip
    peak_matmul = {dtype: matmul_gflops(device, dtype) for dtype in models}
    for dtype, gflops in peak_matmul.items():
        print(f"dense matmul 2048x2048 {_name(dtype)}: {gflops:.1f} GFLOP/s")

    volume = ct_volume(args.slices)
    slices = torch.from_numpy(volume[:8, None].astype(np.float32) / 4096).to(device)  # a real-content batch
    slices = slices.expand(-1, 2 * model.context + 1, -1, -1).contiguous(memory_format=torch.channels_last)
    flops = network_flops(network, slices[:1])
    parameters = sum(p.numel() for p in network.parameters())
    print(f"network: {type(network).__name__}, {parameters / 1e3:.0f}k parameters, {flops / 1e9:.2f} GFLOP per "
          "512x512 slice")  # fmt: skip

    # The volume first: ru_maxrss is the process's lifetime peak, and the batch-size comparison below uses more.
    baseline_rss = psutil.Process().memory_info().rss  # imports, model and the int16 volume itself
    view_counts = sorted({1, args.views})
    one_slice = best_seconds(
        {
            (dtype, views): (lambda m=each, v=views: denoise_volume(volume[:1], m, views=v))
            for dtype, each in models.items()
            for views in view_counts
        },
        args.rounds,
    )
    for (dtype, views), seconds in one_slice.items():
        print(f"engine, one 512x512 int16 slice, {_name(dtype)}, {views} view(s): {seconds:.3f} s")
    plane = IntensityWindow.from_data(volume[0]).forward(volume[0])  # BM3D works on the same [0, 1] scale
    start = time.perf_counter()
    bm3d(plane)  # sigma estimated from the slice, as a user without the true sigma runs it
    bm3d_seconds = time.perf_counter() - start
    faster = ", ".join(
        f"{bm3d_seconds / seconds:.0f}x in {_name(dtype)} with {views} view(s)"
        for (dtype, views), seconds in one_slice.items()
    )
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
    nchw = LoadedModel(nchw_network, device, model.context, precision=torch.float32)
    with torch.inference_mode():
        candidates = {("NCHW", torch.float32, 2): lambda: nchw.predict(nchw_slices[:2])}
        candidates.update(
            {
                ("channels-last", d, n): (lambda m=m, n=n: m.predict(slices[:n]))
                for d, m in models.items()
                for n in sizes
            }
        )
        seconds = best_seconds(candidates, args.rounds)
    per_slice = {key: value / key[2] for key, value in seconds.items()}
    for (layout, dtype, batch), value in per_slice.items():
        gflops = flops / value / 1e9
        print(f"network forward, {layout} {_name(dtype)} batch {batch}: {value:.3f} s/slice = {gflops:.1f} GFLOP/s "
              f"({100 * gflops / peak_matmul[dtype]:.0f}% of {_name(dtype)} matmul)")  # fmt: skip
    channels_last = per_slice[("channels-last", torch.float32, 2)]
    print(f"float32 channels-last speed-up over NCHW: {per_slice[('NCHW', torch.float32, 2)] / channels_last:.2f}x")
    if model.precision != torch.float32:
        speed_up = channels_last / per_slice[("channels-last", model.precision, 2)]
        print(f"{_name(model.precision)} speed-up over float32 (channels-last, batch 2): {speed_up:.2f}x")


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


if __name__ == "__main__":
    main()
