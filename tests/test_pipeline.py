"""One file pipeline behind three doors: the command line, the Slicer worker and the bundle's inference config."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import BUNDLE, ROOT, load_script
from monai.bundle import run

from scripts import pipeline, slices
from scripts.errors import InvalidImageError
from scripts.image_io import Volume, read_image, write_image

sys.path.insert(0, str(ROOT / "MedDenoise"))

from MedDenoiseLib import worker


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every call of ``pipeline.denoise_file`` (source and settings), which still does the work."""
    seen = []
    denoise_file = pipeline.denoise_file

    def spy(source, target, model, settings=None, *args, **kwargs):
        seen.append({"source": str(source), "settings": settings})
        return denoise_file(source, target, model, settings, *args, **kwargs)

    monkeypatch.setattr(pipeline, "denoise_file", spy)
    return seen


def test_the_three_doors_call_the_pipeline_once_and_give_the_same_image(embedded, tmp_path, calls, capsys):
    mr = read_image(embedded["validation"][1]["image"])  # pydicom's MR_small: a real 64 x 64 int16 MR slice
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    source = write_image(dataset / "mr.nrrd", mr.array, like=mr)

    cli = load_script("denoise")
    assert cli.main([str(source), "-o", str(tmp_path / "cli.nrrd"), "--device", "cpu"]) == 0
    assert worker.main(["--engine", str(BUNDLE), "denoise", "--input", str(source), "--output",
                        str(tmp_path / "worker.nrrd"), "--device", "cpu"]) == 0  # fmt: skip
    run(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        dataset_dir=str(dataset),
        output_dir=str(tmp_path / "config"),
        output_ext=".nrrd",
        device="$torch.device('cpu')",
    )

    assert [call["source"] for call in calls] == [str(source)] * 3  # each door once, through the module attribute
    # the same settings by default (the command line alone refuses to overwrite): the engine's pixel budget for the
    # batch, not a fixed batch of 8; each image's own window
    defaults = pipeline.DenoiseSettings()
    assert [call["settings"] for call in calls] == [pipeline.DenoiseSettings(overwrite=False), defaults, defaults]
    assert defaults.batch_size is None and defaults.window is None
    results = [read_image(path).array for path in (tmp_path / "cli.nrrd", tmp_path / "worker.nrrd")]
    results.append(read_image(tmp_path / "config" / "mr_denoised.nrrd").array)
    assert not np.array_equal(results[0], mr.array) and results[0].dtype == mr.array.dtype
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_adapting_checks_the_volume_once(ct_volume_int16, tmp_path, monkeypatch, capsys):
    """With --adapt the noise readout, the adaptation (twice: its own noise readout) and the engine each check the
    volume; its values are scanned once, and the volume can be written again once the run is over."""
    noise = np.random.default_rng(0).normal(0, 30, ct_volume_int16.shape)
    volume = (ct_volume_int16 + noise).astype(np.float32)  # float: integer images have no values to scan
    source = write_image(tmp_path / "ct.nrrd", volume, like=Volume(volume, (1.0,) * 3, (0.0,) * 3, np.eye(3).ravel()))
    scanned = []
    check_values = slices._check_values

    def counted(array):
        scanned.append(array.shape)
        check_values(array)

    monkeypatch.setattr(slices, "_check_values", counted)
    cli = load_script("denoise")
    code = cli.main(
        [str(source), "-o", str(tmp_path / "out.nrrd"), "--device", "cpu", "--adapt", "--adapt-seconds", "1"]
    )
    output = capsys.readouterr()
    assert code == 0, output.err
    assert "ct.nrrd: noise" in output.out and "adapted for" in output.out  # the adaptation ran
    assert scanned.count(volume.shape) == 1  # other scans are of the few slices the adaptation samples


def test_a_checked_volume_is_read_only_inside_the_run_and_writable_after():
    volume = np.zeros((3, 8, 8), np.float32)
    with slices.checked_once(volume) as checked:
        assert checked is volume and not volume.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            volume[0, 0, 0] = 1
    assert volume.flags.writeable
    volume[0, 0, 0] = np.nan  # outside the run the full check applies again
    with pytest.raises(InvalidImageError, match="NaN"):
        slices.check_volume(volume)
