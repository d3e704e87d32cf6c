"""The worker runs in Slicer's Python, which holds only what Slicer bundles plus what the module installs
(``MedDenoiseLib.dependencies``): every worker action runs on a real volume with nothing else importable
(``tests/slicer_standin/slicer_python.py``), so a new import in the bundle's code fails here, lazy ones included."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "MedDenoise"))

from MedDenoiseLib.dependencies import SLICER_BUNDLED, WORKER_PACKAGES  # noqa: E402
from MedDenoiseLib.volume_file import read_volume_file, write_volume_file  # noqa: E402

RUNNER = ROOT / "tests" / "slicer_standin" / "slicer_python.py"
WORKER = ROOT / "MedDenoise" / "MedDenoiseLib" / "worker.py"
BUNDLE = ROOT / "bundle"
#: What a Slicer with MedDenoise's dependencies installed holds (torch from the PyTorch extension).
SLICER_WITH_MEDDENOISE = (*SLICER_BUNDLED, *WORKER_PACKAGES, "torch")


def run_worker(allowed, *arguments) -> tuple[int, list[dict], str]:
    """Exit code, protocol events and the rest of the output of the worker run with only ``allowed`` importable."""
    done = subprocess.run(
        [sys.executable, str(RUNNER), ",".join(allowed), str(WORKER), "--engine", str(BUNDLE), *map(str, arguments)],
        capture_output=True, text=True, timeout=600, env={"CUDA_VISIBLE_DEVICES": "-1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    lines = done.stdout.splitlines()
    events = [json.loads(line[len("MEDDENOISE ") :]) for line in lines if line.startswith("MEDDENOISE ")]
    return done.returncode, events, done.stderr


@pytest.fixture(scope="module")
def volume(embedded, tmp_path_factory) -> Path:
    """6 real axial slices of nilearn's MNI template, cropped to 96 x 96."""
    from scripts.image_io import read_image

    mni = next(item["image"] for item in embedded["training"] if item["image"].endswith((".nii", ".nii.gz")))
    array = read_image(mni).array
    middle = array.shape[0] // 2
    slab = np.ascontiguousarray(array[middle - 3 : middle + 3, 60:156, 50:146])
    return write_volume_file(tmp_path_factory.mktemp("env") / "mni.nrrd", slab, np.diag([1.0, 1.0, 1.0, 1.0]))


def test_every_worker_action_runs_with_only_slicer_and_the_installed_packages(volume, tmp_path):
    noisy, denoised = tmp_path / "noisy.nrrd", tmp_path / "denoised.nrrd"
    code, events, errors = run_worker(SLICER_WITH_MEDDENOISE, "add-noise", "--input", volume, "--output", noisy,
                                      "--noise", "gaussian:factor=0.1,mean=0,std=1")  # fmt: skip
    assert code == 0 and events[-1]["event"] == "done", errors
    # Every denoise option that reaches other code: reference metrics, self-ensemble, adaptation to the scan.
    code, events, errors = run_worker(SLICER_WITH_MEDDENOISE, "denoise", "--input", noisy, "--output", denoised,
                                      "--reference", volume, "--device", "cpu", "--views", "2",
                                      "--adapt-seconds", "2")  # fmt: skip
    assert code == 0 and events[-1]["event"] == "done", errors
    assert {"metrics", "progress"} <= {event["event"] for event in events}
    assert read_volume_file(denoised)[0].shape == read_volume_file(volume)[0].shape
    refused = errors.strip().splitlines()[-1]
    assert refused.startswith("SLICER-PYTHON refused:") and "nibabel" in refused  # the fence was up: MONAI asked
    code, events, errors = run_worker(SLICER_WITH_MEDDENOISE, "probe")
    assert code == 0 and events[-1]["cuda"] is False, errors


def test_the_check_fails_when_a_needed_package_is_left_out(volume, tmp_path):
    """Without PyWavelets (which the module did not install before) the worker cannot estimate the noise level."""
    allowed = [name for name in SLICER_WITH_MEDDENOISE if name != "PyWavelets"]
    code, _, errors = run_worker(allowed, "denoise", "--input", volume, "--output", tmp_path / "out.nrrd",
                                      "--device", "cpu")  # fmt: skip
    assert code != 0 and "No module named 'pywt'" in errors
    assert not (tmp_path / "out.nrrd").exists()
