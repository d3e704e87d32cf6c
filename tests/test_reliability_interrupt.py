"""Nothing lost: scripts/denoise.py interrupted mid-volume (SIGINT, SIGTERM) writes no output, leaves no temporary
file and no process behind; an existing output is kept without --overwrite; the input file never changes."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import ROOT, ctrl_c_on
from reliability_tally import TALLY, fingerprint, report_at_end, unchanged

from scripts.image_io import Volume, write_image

DENOISE = [sys.executable, str(ROOT / "scripts" / "denoise.py")]
SLICES = 240


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


@pytest.fixture(scope="module")
def long_ct(tmp_path_factory, ct_volume_int16):
    """A real CT slab tiled to 240 slices of 384 x 448: with --batch-size 1 it takes seconds even on an idle machine
    with a fast model, so the signal always lands mid-volume."""
    volume = np.tile(ct_volume_int16, (SLICES // len(ct_volume_int16), 2, 2))
    geometry = Volume(volume, (0.7, 0.7, 2.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    return write_image(tmp_path_factory.mktemp("input") / "ct.nii.gz", volume, like=geometry)


def start(*arguments) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen(
        [*DENOISE, *map(str, arguments)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_on
    )
    stderr: list[str] = []

    def read() -> None:  # tqdm redraws with '\r'; keep every chunk so the test sees the slice count grow
        for chunk in iter(lambda: process.stderr.read1(256), b""):
            stderr.append(chunk.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return process, stderr


def wait_until_denoising(process: subprocess.Popen, stderr: list[str], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    # tqdm redraws at most every 0.1 s, so any count from 2 on (not "2/240" itself, which a fast run may skip)
    while not any(int(done) >= 2 for done in re.findall(rf"(\d+)/{SLICES}", "".join(stderr))):
        assert process.poll() is None, f"denoise.py ended before it could be interrupted: {''.join(stderr)[-500:]}"
        assert time.monotonic() < deadline, "denoise.py did not start denoising"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_volume_writes_nothing_and_leaves_no_process(long_ct, tmp_path, signum):
    before = fingerprint(long_ct)
    output = tmp_path / "out" / "ct_denoised.nii.gz"
    output.parent.mkdir()
    process, stderr = start(long_ct, "-o", output, "--batch-size", "1", "--device", "cpu")
    wait_until_denoising(process, stderr)
    tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signum)
    TALLY.faults += 1
    assert process.wait(timeout=120) == 130, "".join(stderr)[-500:]
    _, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"processes left behind: {alive}"
    assert "interrupted" in "".join(stderr)
    assert not output.exists() and not any(output.parent.iterdir()), "a partial or temporary file was left"
    assert unchanged(long_ct, before)


def test_an_existing_output_is_kept_without_overwrite(long_ct, tmp_path):
    before = fingerprint(long_ct)
    output = tmp_path / "ct_denoised.nii.gz"
    output.write_bytes(b"an earlier result")
    TALLY.faults += 1
    result = subprocess.run([*DENOISE, str(long_ct), "-o", str(output)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "--overwrite" in result.stderr
    assert output.read_bytes() == b"an earlier result"
    assert unchanged(long_ct, before)


def _wait_for(predicate, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, "denoise.py ended before the signal"
        assert time.monotonic() < deadline, "denoise.py never got there"
        time.sleep(0.05)


def _importing_torch(pid: int) -> bool:
    """True once torch's library is mapped: the process is inside its start-up imports (or past them)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_starting_exits_quietly(long_ct, tmp_path, signum):
    """Before: Ctrl-C during the start-up imports printed a KeyboardInterrupt traceback, SIGTERM killed silently."""
    output = tmp_path / "out.nii.gz"
    process, stderr = start(long_ct, "-o", output, "--device", "cpu")
    _wait_for(lambda: _importing_torch(process.pid), process)
    process.send_signal(signum)
    TALLY.faults += 1
    assert process.wait(timeout=120) == 130
    time.sleep(0.2)  # the reader thread drains stderr
    assert "Traceback" not in "".join(stderr) and "interrupted" in "".join(stderr), "".join(stderr)[-800:]
    assert not output.exists()


def test_sigterm_while_blocked_reading_exits_quietly(tmp_path):
    """A detached header whose data file is /dev/stdin (a pipe nobody writes): the read blocks, or is refused; either
    way SIGTERM or the refusal ends the run without a traceback. Before: a KeyboardInterrupt traceback."""
    header = tmp_path / "blocked.nhdr"
    header.write_text(
        "NRRD0004\ntype: short\ndimension: 2\nsizes: 64 64\nencoding: raw\nendian: little\ndata file: /dev/stdin\n\n"
    )
    process = subprocess.Popen(
        [*DENOISE, str(header), "-o", str(tmp_path / "out.nrrd"), "--device", "cpu"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=ctrl_c_on,
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and not Path(f"/proc/{process.pid}/wchan").read_text().endswith("pipe_read"):
        assert time.monotonic() < deadline, "denoise.py neither blocked nor ended"
        time.sleep(0.1)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    TALLY.faults += 1
    _, err = process.communicate(timeout=60)
    assert process.returncode in (1, 130) and "Traceback" not in err.decode(), err.decode()[-800:]
    assert not (tmp_path / "out.nrrd").exists()
