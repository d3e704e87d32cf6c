#!/usr/bin/env python
"""Load benchmark: many files and one large volume through scripts/denoise.py in one process; prints resident memory.

    python scripts/bench_load.py                       # 200 files, then a 512 x 512 x 600 int16 volume
    python scripts/bench_load.py --files 50 --slices 100

The files are real slices (pydicom-data CT, MR and X-ray, nilearn MNI152) written alternately as NIfTI and PNG. Memory
is flat when the resident size after the last file is close to the size after the first quarter; for the volume, the
peak should stay near input + output (2 x 300 MB for 512 x 512 x 600 int16) plus one batch.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

from scripts.data import embedded_datalist, load_slices  # noqa: E402
from scripts.image_io import Volume, read_image, write_image  # noqa: E402

MB = 1 << 20


class PeakMemory:
    """Samples this process's resident set size every 50 ms (getrusage's peak never goes down between phases)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakMemory:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()

    def rss(self) -> float:
        return self.process.memory_info().rss / MB


def load_denoise_tool():
    spec = importlib.util.spec_from_file_location("denoise_tool", Path(__file__).with_name("denoise.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_files(folder: Path, count: int) -> list[Path]:
    """``count`` real 2D slices, cropped to at most 256 x 256, alternately as NIfTI and 8-bit PNG."""
    folder.mkdir()
    items = [item for split in embedded_datalist().values() for item in split]
    slices = load_slices(items, progress=False)
    paths = []
    for index in range(count):
        image = slices[index % len(slices)]["label"][0][:256, :256]  # [0, 1]
        picture = np.rint(image * 255).astype(np.uint8)
        like = Volume(picture, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
        ext = ".nii.gz" if index % 2 == 0 else ".png"
        paths.append(write_image(folder / f"slice{index:03d}{ext}", picture, like=like))
    return paths


def bench_files(tool, folder: Path, count: int) -> None:
    inputs = write_files(folder / "files", count)
    after: list[float] = []
    denoise_file = tool.pipeline.denoise_file

    def measured(*args, **kwargs):  # resident size after each file, taken inside denoise.py's own loop
        run = denoise_file(*args, **kwargs)
        after.append(monitor.rss())
        return run

    tool.pipeline.denoise_file = measured
    started = time.perf_counter()
    with PeakMemory() as monitor:
        code = tool.main([*map(str, inputs), "-o", str(folder / "files_out") + "/", "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert code == 0 and len(list((folder / "files_out").iterdir())) == count, "denoise.py failed on the files"
    quarter = after[count // 4 - 1]
    print(
        f"files: {count} files in {seconds:.1f} s; resident after file 1 {after[0]:.0f} MB, after file {count // 4} "
        f"{quarter:.0f} MB, after file {count} {after[-1]:.0f} MB (growth {after[-1] - quarter:+.0f} MB over the last "
        f"{count - count // 4}); peak {monitor.peak / MB:.0f} MB"
    )


def bench_volume(tool, folder: Path, slices: int) -> None:
    plane = read_image(embedded_datalist()["test"][0]["image"]).array[0]  # real 512 x 512 CT, HU
    volume = np.stack([np.roll(plane, k % 32, axis=0) for k in range(slices)]).astype(np.int16)
    like = Volume(volume, (0.7, 0.7, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    source = write_image(folder / "volume.nii", volume, like=like)
    size = volume.nbytes / MB
    del volume, like
    output = folder / "volume_denoised.nii"
    started = time.perf_counter()
    with PeakMemory() as monitor:
        base = monitor.rss()
        code = tool.main([str(source), "-o", str(output), "--device", "cpu"])
    seconds = time.perf_counter() - started
    assert code == 0 and output.is_file(), "denoise.py failed on the volume"
    print(
        f"volume: {plane.shape[0]} x {plane.shape[1]} x {slices} int16 ({size:.0f} MB) in {seconds:.1f} s; resident "
        f"before {base:.0f} MB, peak {monitor.peak / MB:.0f} MB (+{monitor.peak / MB - base:.0f} MB = "
        f"{(monitor.peak / MB - base) / size:.1f} x the volume)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200, help="number of files (default 200)")
    parser.add_argument("--slices", type=int, default=600, help="slices of the 512 x 512 volume (default 600)")
    args = parser.parse_args(argv)
    tool = load_denoise_tool()
    with tempfile.TemporaryDirectory(prefix="bench_load_") as folder:
        if args.files:
            bench_files(tool, Path(folder), args.files)
        if args.slices:
            bench_volume(tool, Path(folder), args.slices)
    return 0


if __name__ == "__main__":
    sys.exit(main())
