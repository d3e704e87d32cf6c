"""Outputs an independent attack (issue 29) found mishandled: a full disk reported as success, a killed bundle
extraction leaving its staging folder, and output problems (extension, folder, name, window, size) found only after
the whole denoise. Each is now refused by name before any denoising, or written whole; inputs never change."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLE, ROOT, load_script
from reliability_tally import TALLY, fingerprint, report_at_end, unchanged

from scripts.bundle_archive import extract_bundle
from scripts.image_io import Volume, read_image, write_image

GEOMETRY = ((0.7, 0.7, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


def small_disk(limit: int):
    """``preexec_fn`` for a child whose files may not grow beyond ``limit`` bytes: what a full disk does to a write
    (the write fails with EFBIG instead of ENOSPC), without root or a mount, so it runs the same in CI."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_fails_the_write_and_leaves_nothing(tmp_path, ct_volume_int16):
    volume = np.tile(ct_volume_int16, (1, 2, 2))  # 6 x 384 x 448 int16: 2 MB
    np.save(tmp_path / "volume.npy", volume)
    folder = tmp_path / "out"
    folder.mkdir()
    child = f"""
import sys
sys.path.insert(0, {str(BUNDLE)!r})
import numpy as np
from scripts.errors import ImageWriteError
from scripts.image_io import Volume, write_image
volume = Volume(np.load({str(tmp_path / "volume.npy")!r}), *{GEOMETRY!r})
for ext in (".nii", ".nii.gz", ".nrrd", ".mha"):
    try:
        write_image({str(folder)!r} + "/out" + ext, volume.array, like=volume)
        print(ext, "written")
    except ImageWriteError as error:
        print(ext, "refused:", error)
"""
    result = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=120, preexec_fn=small_disk(300_000)
    )
    TALLY.faults += 4
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all("refused:" in line and "cannot be written" in line for line in lines), result
    assert list(folder.iterdir()) == [], "a truncated or partial file was left"


def test_a_full_disk_gives_a_failed_run_not_a_short_nifti(tmp_path, ct_volume_int16):
    source = write_image(
        tmp_path / "ct.nrrd", np.tile(ct_volume_int16, (1, 2, 2)), like=Volume(ct_volume_int16, *GEOMETRY)
    )
    before = fingerprint(source)
    output = tmp_path / "out" / "ct.nii"
    output.parent.mkdir()
    command = [sys.executable, str(ROOT / "scripts" / "denoise.py"), str(source), "-o", str(output), "--device", "cpu"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=small_disk(300_000))
    TALLY.faults += 1
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot be written" in result.stderr and str(output) in result.stderr
    assert not output.exists() and list(output.parent.iterdir()) == []
    assert unchanged(source, before)


def test_a_killed_bundle_extraction_is_cleaned_up_on_the_next_run(tmp_path):
    release = tmp_path / "bundle.zip"
    with zipfile.ZipFile(release, "w") as archive:
        archive.writestr("meddenoise_test/configs/metadata.json", '{"version": "0.1.0"}')
        for index in range(3):
            archive.writestr(f"meddenoise_test/models/part{index}.bin", os.urandom(1 << 20))
    cache = tmp_path / "cache"
    killed_mid_copy = f"""
import os, shutil, signal, sys
sys.path.insert(0, {str(BUNDLE)!r})
from scripts import bundle_archive
copy = shutil.copyfileobj
def copy_then_die(source, sink, *args):
    copy(source, sink, *args)
    sink.flush()
    os.kill(os.getpid(), signal.SIGKILL)
bundle_archive.shutil.copyfileobj = copy_then_die
bundle_archive.extract_bundle({str(release)!r}, cache_dir={str(cache)!r})
"""
    result = subprocess.run([sys.executable, "-c", killed_mid_copy], capture_output=True, timeout=120)
    TALLY.faults += 1
    assert result.returncode == -signal.SIGKILL
    left = [path for path in cache.rglob(".*") if path.is_dir()]
    assert left, "the kill did not land mid-extraction"
    folder = extract_bundle(release, cache_dir=cache)
    assert (folder / "configs" / "metadata.json").is_file()
    assert not [path for path in cache.rglob(".*") if path.is_dir()], "the dead run's staging folder is still there"


# --- The command line: output problems are found before any work -------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    return load_script("denoise")


@pytest.fixture
def no_denoising(cli, monkeypatch):
    """Fails the test if denoise.py starts denoising: the problem had to be found before."""

    def denoise_volume(*args, **kwargs):
        raise AssertionError("denoise.py started denoising before finding the output problem")

    monkeypatch.setattr(cli.pipeline, "denoise_volume", denoise_volume)  # the file pipeline the tool runs


def refused_before_work(cli, capsys, arguments: list, message: str) -> str:
    TALLY.corrupted_files += 1
    assert cli.main([str(argument) for argument in arguments]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("denoise.py: error: ") and "\n" not in error and message in error, error
    return error


@pytest.fixture
def png(tmp_path, ct_slice) -> Path:
    return write_image(
        tmp_path / "slice.png",
        (ct_slice[:64, :64] * 255).astype(np.uint8),
        like=Volume(ct_slice, (1, 1), (0, 0), (1, 0, 0, 1)),
    )


def test_output_problems_are_refused_before_denoising(cli, no_denoising, capsys, tmp_path, png):
    before = fingerprint(png)
    a_file = tmp_path / "result"
    a_file.write_text("keep me")
    taken = tmp_path / "taken"
    (taken / "slice.png").mkdir(parents=True)
    cases = {
        "out.jpg": "cannot write '.jpg'",
        "missing/out.png": "does not exist",
        "result/": "an existing file, not a folder",
        "result": "an existing file, not a folder",
        "-": "standard output",
        "taken/": "a folder of that name exists",
        "result/sub/": "cannot be made",
    }
    for output, message in cases.items():
        target = output if output == "-" else tmp_path / output
        if output.endswith("/"):
            target = f"{target}/"
        refused_before_work(cli, capsys, [png, "-o", target], message)
    refused_before_work(cli, capsys, [png, "-o", tmp_path / "w.png", "--window", "100", "100"], "LOW must be below")
    assert a_file.read_text() == "keep me" and not (tmp_path / "-").exists()
    assert unchanged(png, before)


def test_read_only_output_folder_is_refused_before_denoising(cli, no_denoising, capsys, tmp_path, png):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: make the folder a read-only file system
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(read_only)], capture_output=True
        )
        if mounted.returncode:
            pytest.skip(f"root without mount rights cannot make a read-only folder: {mounted.stderr!r}")
    else:
        read_only.chmod(0o555)
    try:
        refused_before_work(cli, capsys, [png, "-o", read_only / "out.png"], "not writable")
        refused_before_work(cli, capsys, [png, "-o", f"{read_only}/sub/"], "cannot be made")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(read_only)], check=True)


@pytest.mark.parametrize(("shape", "axis"), [((1, 1), 0), ((2, 2), 0), ((1, 40), 0), ((3, 48, 40), 1)])
def test_images_too_small_to_denoise_are_named(cli, no_denoising, capsys, tmp_path, shape, axis):
    geometry = GEOMETRY if len(shape) == 3 else ((1, 1), (0, 0), (1, 0, 0, 1))
    source = write_image(
        tmp_path / f"tiny{len(shape)}.nrrd", np.full(shape, 7, np.int16), like=Volume(np.zeros(shape), *geometry)
    )
    error = refused_before_work(
        cli, capsys, [source, "-o", tmp_path / "out.nrrd", "--axis", axis], "too small to denoise"
    )
    assert str(source) in error and not (tmp_path / "out.nrrd").exists()


def test_default_output_names_pick_a_format_that_holds_the_image(cli, capsys, tmp_path, ct_volume_int16):
    import imageio.v3 as iio
    import tifffile

    stack = (ct_volume_int16[:5, :64, :64] + 1024).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    iio.imwrite(tmp_path / "sixteen.pgm", stack[0])
    folder = tmp_path / "out"
    assert (
        cli.main([str(tmp_path / "stack.tif"), str(tmp_path / "sixteen.pgm"), "-o", f"{folder}/", "--device", "cpu"])
        == 0
    )
    TALLY.corrupted_files += 2
    assert sorted(path.name for path in folder.iterdir()) == ["sixteen.png", "stack.nii.gz"]
    assert read_image(folder / "stack.nii.gz").array.shape == stack.shape
    sixteen = read_image(folder / "sixteen.png").array
    assert sixteen.dtype == np.uint16 and sixteen.shape == stack[0].shape


def test_image_size_limit_is_a_flag(cli, no_denoising, capsys, tmp_path, png):
    refused_before_work(cli, capsys, [png, "-o", tmp_path / "out.png", "--max-image-mb", "0.001"], "--max-image-mb")
