#!/usr/bin/env python
"""Training throughput (samples per second) of 1 vs 2 CPU processes with the bundle's multi-process config.

    python scripts/bench_distributed.py
    python scripts/bench_distributed.py --max_slices_per_volume 16 --epochs 3

Each setting runs ``train.yaml`` + ``multi_gpu_train.yaml`` through MONAI's ConfigWorkflow in N processes (gloo,
DistributedDataParallel, DistributedSampler), exactly as torchrun would, on the embedded real images. The time of the
last epoch (ignite's own epoch timer, validation excluded) gives samples/s = patches trained by all ranks / time.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from monai.bundle import ConfigWorkflow  # noqa: E402

CONFIGS = [str(BUNDLE / "configs" / "train.yaml"), str(BUNDLE / "configs" / "multi_gpu_train.yaml")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_distributed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed (default 2)")
    parser.add_argument("--max_slices_per_volume", type=int, default=8, help="slices of each embedded volume")
    parser.add_argument("--batch_size", type=int, default=32, help="patches per step and process (default 32)")
    parser.add_argument("--patch_size", type=int, default=64)
    return parser.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world_size: int, threads: int, port: int, args: argparse.Namespace, results) -> None:
    # the environment torchrun gives each process
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        CUDA_VISIBLE_DEVICES="",  # CPU processes even on a GPU machine
    )
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as scratch:
        workflow = ConfigWorkflow(
            config_file=CONFIGS,
            logging_file=False,
            workflow_type="train",
            max_epochs=args.epochs,
            max_slices_per_volume=args.max_slices_per_volume,
            batch_size=args.batch_size,
            patch_size=args.patch_size,
            val_interval=args.epochs + 1,  # no validation: training throughput only
            output_dir=os.path.join(scratch, "runs"),
            ckpt_dir=os.path.join(scratch, "models"),
            show_progress=False,  # no progress bar in the printed table
        )
        workflow.initialize()
        workflow.run()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        if rank == 0:
            sampler = trainer.data_loader.sampler
            patches = len(sampler) * world_size * workflow.parser.get_parsed_content("patches_per_slice")
            results.put((patches, trainer.state.times["EPOCH_COMPLETED"]))
        workflow.finalize()


def measure(world_size: int, threads: int, args: argparse.Namespace) -> tuple[int, float]:
    """``(patches per epoch over all ranks, seconds of the last epoch)`` of one multi-process run."""
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(
        _worker, args=(world_size, threads, _free_port(), args, results), nprocs=world_size, start_method="spawn"
    )
    return results.get()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cores = os.cpu_count() or 1
    settings = [(1, 1), (1, min(2, cores)), (2, 1)]  # (processes, threads each)
    rows = []
    for world_size, threads in settings:
        print(f"running {world_size} process(es) x {threads} thread(s) ...", flush=True)
        patches, seconds = measure(world_size, threads, args)
        rows.append((world_size, threads, patches, seconds, patches / seconds))
    print(f"\n{cores} CPU cores; patch {args.patch_size}x{args.patch_size}, batch {args.batch_size} per process")
    print(f"{'processes':>9} {'threads':>7} {'patches/epoch':>13} {'epoch s':>8} {'samples/s':>9} {'speed-up':>8}")
    for world_size, threads, patches, seconds, rate in rows:
        print(f"{world_size:9d} {threads:7d} {patches:13d} {seconds:8.2f} {rate:9.1f} {rate / rows[0][4]:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
