"""MedDenoiseLib (the Slicer-independent part of the Slicer module) and its worker, on real volumes: the temporary-file
round trip, model validation, dependency ranges, and worker jobs with progress, cancel and crash."""

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "MedDenoise"))

from MedDenoiseLib import (  # noqa: E402
    JobCancelledError,
    ModuleError,
    WorkerFailedError,
    WorkerJob,
    find_shipped_bundle,
    job,
    read_model_info,
    read_volume_file,
    requirements,
    unmet,
    worker,
    worker_command,
    write_volume_file,
)

BUNDLE = ROOT / "bundle"
#: An oblique IJK-to-RAS matrix (rotated axes, anisotropic spacing, offset origin) to check geometry survives.
OBLIQUE = np.array([[0.0, 0.0, -2.5, 10.0], [0.0, 0.8, 0.0, -20.0], [0.9, 0.0, 0.0, 35.5], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def mni_slab(embedded) -> np.ndarray:
    """12 real axial slices (233 x 197, uint8) of nilearn's MNI152 template."""
    from scripts.image_io import read_image

    mni = next(item["image"] for item in embedded["training"] if item["image"].endswith((".nii", ".nii.gz")))
    volume = read_image(mni).array
    middle = volume.shape[0] // 2
    return np.ascontiguousarray(volume[middle - 6 : middle + 6])


@pytest.fixture(scope="module")
def mni_file(mni_slab, tmp_path_factory) -> Path:
    return write_volume_file(tmp_path_factory.mktemp("volumes") / "mni.nrrd", mni_slab, OBLIQUE)


def events(output: str) -> list[dict]:
    return [json.loads(line[len(worker.PREFIX) :]) for line in output.splitlines() if line.startswith(worker.PREFIX)]


def test_volume_file_round_trip_keeps_voxels_and_geometry(mni_slab, tmp_path):
    before = mni_slab.copy()
    path = write_volume_file(tmp_path / "v.nrrd", mni_slab, OBLIQUE)
    array, matrix = read_volume_file(path)
    np.testing.assert_array_equal(array, mni_slab)
    assert array.dtype == mni_slab.dtype
    np.testing.assert_allclose(matrix, OBLIQUE, atol=1e-6)
    np.testing.assert_array_equal(mni_slab, before)  # the caller's array is untouched
    # ITK sees the same world in LPS: the RAS x/y flip and spacing = column lengths.
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetSpacing(), (0.9, 0.8, 2.5))
    np.testing.assert_allclose(image.GetOrigin(), (-10.0, 20.0, 35.5))


def test_volume_file_rejects_what_it_cannot_write(tmp_path):
    with pytest.raises(ModuleError, match="K x J x I"):
        write_volume_file(tmp_path / "v.nrrd", np.zeros((4, 4), np.float32), OBLIQUE)
    with pytest.raises(ModuleError, match="zero spacing"):
        write_volume_file(tmp_path / "v.nrrd", np.zeros((2, 4, 4), np.float32), np.diag([1.0, 0.0, 1.0, 1.0]))
    (tmp_path / "junk.nrrd").write_text("not an image")
    with pytest.raises(ModuleError, match=r"junk\.nrrd"):
        read_volume_file(tmp_path / "junk.nrrd")


def test_shipped_bundle_is_found_in_a_source_checkout_and_in_resources(tmp_path):
    assert find_shipped_bundle(ROOT / "MedDenoise") == BUNDLE
    packaged = tmp_path / "module" / "Resources" / "MedDenoiseBundle"
    shutil.copytree(BUNDLE / "configs", packaged / "configs")
    shutil.copytree(BUNDLE / "scripts", packaged / "scripts")
    assert find_shipped_bundle(tmp_path / "module") == packaged
    with pytest.raises(ModuleError, match="reinstall"):
        find_shipped_bundle(tmp_path / "elsewhere")


def make_bundle(root: Path, metadata: dict | str, weights: bool = True) -> Path:
    (root / "configs").mkdir(parents=True)
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    (root / "configs" / "metadata.json").write_text(text)
    if weights:
        (root / "models").mkdir()
        shutil.copy(BUNDLE / "models" / "model.pt", root / "models" / "model.pt")
    return root


def test_model_validation_of_folders_and_zips(tmp_path):
    shipped = read_model_info(BUNDLE)
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert (shipped.name, shipped.version) == (metadata["name"], metadata["version"])
    assert shipped.version in shipped.description

    # A zipped bundle with its files inside one top folder, as MONAI packs them.
    folder = make_bundle(tmp_path / "zipped" / "my_bundle", metadata)
    archive = tmp_path / "my_bundle.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in folder.rglob("*"):
            zipped.write(file, file.relative_to(folder.parent))
    assert read_model_info(archive).channels == shipped.channels

    even = json.loads(json.dumps(metadata))
    even["network_data_format"]["inputs"]["image"]["num_channels"] = 2
    problems = {
        "not valid JSON": make_bundle(tmp_path / "badjson", "{"),
        "no weights": make_bundle(tmp_path / "noweights", metadata, weights=False),
        "2 input channels": make_bundle(tmp_path / "even", even),
        "network_data_format": make_bundle(tmp_path / "classifier", {"name": "x"}),
        "no such bundle": tmp_path / "missing",
        "neither a bundle folder nor a .zip": tmp_path / "no-bundle.txt",
    }
    (tmp_path / "no-bundle.txt").write_text("hello")
    for message, path in problems.items():
        with pytest.raises(ModuleError, match=message):
            read_model_info(path)


def test_requirements_follow_the_metadata():
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    specs = requirements(metadata)
    major, minor = metadata["monai_version"].split(".")[:2]
    assert specs["monai"] == f"monai>={major}.{minor},<{int(major) + 1}"
    assert specs["torch"].startswith(f"torch>={metadata['pytorch_version'].split('.')[0]}.")
    assert set(specs) == {"torch", "monai", "pyyaml", "PyWavelets", "tqdm"}
    assert specs["PyWavelets"].startswith("PyWavelets>=1.")  # every worker package has a range from the metadata
    # This environment runs the bundle, so it meets them; impossible or absent packages are reported.
    assert unmet(list(specs.values())) == []
    assert unmet(["pytest<1", "no-such-package-meddenoise"]) == ["pytest<1", "no-such-package-meddenoise"]


def test_worker_adds_noise_and_denoises_with_metrics(mni_file, tmp_path, capsys):
    noisy = tmp_path / "noisy.nrrd"
    code = worker.main(["--engine", str(BUNDLE), "add-noise", "--input", str(mni_file), "--output", str(noisy),
                        "--noise", "gaussian:factor=0.1,mean=0,std=1", "--seed", "3"])  # fmt: skip
    assert code == 0 and events(capsys.readouterr().out)[-1]["event"] == "done"
    clean, clean_matrix = read_volume_file(mni_file)
    noisy_array, noisy_matrix = read_volume_file(noisy)
    np.testing.assert_allclose(noisy_matrix, clean_matrix)
    difference = noisy_array.astype(np.float64) - clean
    assert noisy_array.dtype == np.float32 and 0.05 * 255 < difference.std() < 0.15 * 255  # factor 0.1 of the window

    denoised = tmp_path / "denoised.nrrd"
    code = worker.main(["--engine", str(BUNDLE), "denoise", "--input", str(noisy), "--output", str(denoised),
                        "--reference", str(mni_file), "--device", "cpu", "--batch-size", "5"])  # fmt: skip
    seen = events(capsys.readouterr().out)
    assert code == 0
    progress = [(e["done"], e["total"]) for e in seen if e["event"] == "progress"]
    assert progress == [(5, 12), (10, 12), (12, 12)]
    metrics = next(e for e in seen if e["event"] == "metrics")
    assert set(metrics["before"]) == set(metrics["after"]) == {"psnr", "ssim", "mse"}
    result, matrix = read_volume_file(denoised)
    assert result.shape == clean.shape and result.dtype == np.float32
    np.testing.assert_allclose(matrix, clean_matrix)
    assert not np.array_equal(result, noisy_array)


@pytest.mark.slow
def test_worker_passes_the_self_ensemble_size_to_the_engine(mni_file, tmp_path, capsys, shipped_model):
    from scripts.engine import denoise_volume

    denoised = tmp_path / "best.nrrd"
    code = worker.main(["--engine", str(BUNDLE), "denoise", "--input", str(mni_file), "--output", str(denoised),
                        "--device", "cpu", "--views", "8", "--float-output"])  # fmt: skip
    assert code == 0 and events(capsys.readouterr().out)[-1]["event"] == "done"
    volume, _ = read_volume_file(mni_file)
    expected = denoise_volume(volume, shipped_model, float_output=True, views=8)
    np.testing.assert_allclose(read_volume_file(denoised)[0], expected, atol=1e-3)
    command = worker_command("python", BUNDLE, "denoise", input="a.nrrd", views=2)
    assert command[-2:] == ["--views", "2"]
    code = worker.main(["--engine", str(BUNDLE), "denoise", "--input", str(mni_file), "--output",
                        str(tmp_path / "bad.nrrd"), "--views", "3"])  # fmt: skip
    error = events(capsys.readouterr().out)[-1]
    assert code == 1 and "views must be one of (1, 2, 4, 8)" in error["message"]  # the engine's check, one place
    assert not (tmp_path / "bad.nrrd").exists()


def test_worker_reports_user_errors_as_error_events(mni_file, tmp_path, capsys):
    out = tmp_path / "out.nrrd"
    code = worker.main(["--engine", str(BUNDLE), "denoise", "--input", str(mni_file), "--output", str(out),
                        "--model", str(tmp_path / "missing-bundle")])  # fmt: skip
    error = events(capsys.readouterr().out)[-1]
    assert code == 1 and error["event"] == "error" and "missing-bundle" in error["message"]
    small = write_volume_file(tmp_path / "small.nrrd", np.zeros((2, 8, 8), np.uint8), OBLIQUE)
    code = worker.main(["--engine", str(BUNDLE), "denoise", "--input", str(mni_file), "--output", str(out),
                        "--reference", str(small)])  # fmt: skip
    error = events(capsys.readouterr().out)[-1]
    assert code == 1 and "reference volume has shape" in error["message"]
    assert not out.exists()


def test_worker_command_passes_only_given_options():
    command = worker_command("python", BUNDLE, "denoise", input="a.nrrd", model=None, float_output=True, axis=0)
    assert command[2:] == ["--engine", str(BUNDLE), "denoise", "--input", "a.nrrd", "--float-output", "--axis", "0"]
    assert Path(command[1]).name == "worker.py"


@pytest.mark.slow
def test_job_runs_in_a_separate_process_with_progress(mni_file, tmp_path):
    output = tmp_path / "denoised.nrrd"
    job = WorkerJob(worker_command(sys.executable, BUNDLE, "denoise", input=mni_file, output=output, device="cpu",
                                   batch_size=4))  # fmt: skip
    seen = []
    job.wait(seen.append)
    assert [e["done"] for e in seen if e["event"] == "progress"] == [4, 8, 12]
    assert job.progress == (12, 12) and job.result["output"] == str(output)
    array, matrix = read_volume_file(output)
    assert array.dtype == np.uint8 and array.shape == (12, 233, 197)  # the engine keeps the input's dtype
    np.testing.assert_allclose(matrix, OBLIQUE, atol=1e-6)


@pytest.mark.slow
def test_cancel_kills_the_worker_tree_and_writes_nothing(mni_file, tmp_path):
    output = tmp_path / "denoised.nrrd"
    job = WorkerJob(worker_command(sys.executable, BUNDLE, "denoise", input=mni_file, output=output, device="cpu",
                                   batch_size=1))  # fmt: skip
    worker_process = psutil.Process(job.process.pid)
    while job.progress[0] == 0:  # wait until it is denoising, then cancel mid-run
        job.poll(timeout=0.1)
        assert not job.finished, f"the worker ended before the test could cancel it: {list(job.log)}"
    tree = [worker_process, *worker_process.children(recursive=True)]
    job.cancel()
    with pytest.raises(JobCancelledError):
        job.wait()
    assert job.progress[0] < 12
    _, alive = psutil.wait_procs(tree, timeout=5)
    assert not alive
    assert not output.exists() and not list(tmp_path.glob("*.partial*"))


def test_a_crashing_worker_is_reported_with_its_output(mni_file, tmp_path):
    job = WorkerJob(worker_command(sys.executable, tmp_path / "no-engine", "denoise", input=mni_file,
                                   output=tmp_path / "out.nrrd"))  # fmt: skip
    with pytest.raises(WorkerFailedError, match="No module named 'scripts'"):
        job.wait()


def test_job_survives_undecodable_output_and_keeps_a_transcript(tmp_path):
    """A library that prints bytes that are not UTF-8 must not kill the reader (the job would never finish)."""
    script = tmp_path / "noisy_worker.py"
    script.write_text(
        "import sys\n"
        "sys.stdout.buffer.write(b'warning: caf\\xe9 \\xff\\n'); sys.stdout.flush()\n"
        'print(\'MEDDENOISE {"event": "status", "text": "Loading"}\', flush=True)\n'
        'print(\'MEDDENOISE {"event": "done"}\', flush=True)\n'
    )
    worker_job = WorkerJob([sys.executable, str(script)])
    seen = []
    worker_job.wait(seen.append)
    assert [event["event"] for event in seen] == ["log", "status", "done"]
    assert worker_job.transcript[0].startswith("warning: caf") and worker_job.transcript[1] == "Loading"


def test_worker_process_has_no_console_window_on_windows():
    """Checked as options (no Windows here): CREATE_NO_WINDOW hides the console Slicer's launchConsoleProcess hides
    with STARTUPINFO; a process group of its own lets cancel kill the tree everywhere."""
    windows = job.process_options("nt")
    assert windows["creationflags"] & 0x08000000 and windows["creationflags"] & 0x00000200
    assert job.process_options("posix") == {"start_new_session": True}


def test_worker_probe_says_whether_torch_sees_a_gpu(capsys):
    import torch

    assert worker.main(["--engine", str(BUNDLE), "probe"]) == 0
    probe = events(capsys.readouterr().out)[-1]
    assert probe["cuda"] == torch.cuda.is_available() and probe["torch"] == torch.__version__
