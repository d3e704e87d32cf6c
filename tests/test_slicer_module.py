"""MedDenoise.py imported and its Logic driven against the test stand-in of slicer/qt/vtk (tests/slicer_standin, NOT
Slicer): geometry, transform and units survive process(...), the input node is untouched, errors change nothing, and a
background run reports progress and can be cancelled."""

import importlib
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
STANDIN = Path(__file__).resolve().parent / "slicer_standin"
OBLIQUE = np.array([[0.0, 0.0, -2.5, 10.0], [0.0, 0.8, 0.0, -20.0], [0.9, 0.0, 0.0, 35.5], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def module():
    """``MedDenoise.py`` imported with the stand-in on ``sys.path``; both are removed again afterwards."""
    paths = [str(STANDIN), str(ROOT / "MedDenoise")]
    sys.path[:0] = paths
    try:
        yield importlib.import_module("MedDenoise")
    finally:
        for path in paths:
            sys.path.remove(path)
        for name in [n for n in sys.modules if n.split(".")[0] in ("slicer", "qt", "vtk", "MedDenoise")]:
            del sys.modules[name]


@pytest.fixture
def scene(module):
    import slicer

    slicer.mrmlScene.Clear()
    slicer.util.slice_viewer_layers.clear()
    return slicer.mrmlScene


@pytest.fixture(scope="module")
def ct_volume(embedded) -> np.ndarray:
    """A real CT (pydicom-data's 2-frame CT is too thin; the 512x512 test CT slice stacked with its flips), int16."""
    from scripts.image_io import read_image

    ct = next(item["image"] for item in embedded["test"] if item["modality"] == "CT")
    image = read_image(ct).array.reshape(-1, 512, 512)[0].astype(np.int16)
    return np.stack([image, image[::-1], image[:, ::-1], image.T])[:, 128:384, 128:384].copy()


def volume_node(scene, name: str, array: np.ndarray, transform: str | None = "vtkMRMLTransformNode7"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.array = array
    node.ijk_to_ras = OBLIQUE.copy()
    node.transform_id = transform
    return node


def test_process_keeps_geometry_units_and_the_input(module, scene, ct_volume):
    import slicer

    node = volume_node(scene, "CT", ct_volume.copy())
    nodes = scene.GetNumberOfNodes()
    logic = module.MedDenoiseLogic()
    progress = []
    result = logic.process(node, device="cpu", onProgress=lambda job: progress.append(job.progress))

    output = result.volume
    assert scene.GetNumberOfNodes() == nodes + 1 and output.GetName() == "CT_denoised"
    np.testing.assert_array_equal(node.array, ct_volume)  # the input node is untouched
    np.testing.assert_array_equal(node.ijk_to_ras, OBLIQUE)
    np.testing.assert_allclose(output.ijk_to_ras, OBLIQUE)
    assert output.GetTransformNodeID() == node.GetTransformNodeID()
    assert output.array.shape == ct_volume.shape and output.array.dtype == np.int16  # HU stay int16, as the engine
    # The same HU the engine gives in this process: nothing is lost or rescaled in the round trip.
    from scripts.engine import denoise_volume, load_bundle

    expected = denoise_volume(ct_volume, load_bundle(None, "cpu")).astype(np.int32)
    assert np.abs(output.array.astype(np.int32) - expected).max() <= 1
    assert progress[-1] == (4, 4) and result.seconds > 0
    assert slicer.util.slice_viewer_layers["background"] is node
    assert slicer.util.slice_viewer_layers["foreground"] is output


def test_invalid_requests_leave_the_scene_unchanged(module, scene, ct_volume, tmp_path):
    node = volume_node(scene, "CT", ct_volume)
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "segmentation")
    label.array = (ct_volume > 0).astype(np.uint8)
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "colour")
    vector.array = np.zeros((*ct_volume.shape, 3), np.uint8)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    nodes = scene.GetNumberOfNodes()
    logic = module.MedDenoiseLogic()
    requests = {
        "label map": {"inputVolume": label},
        "vtkMRMLVectorVolumeNode": {"inputVolume": vector},
        "no voxels": {"inputVolume": empty},
        "no input volume": {"inputVolume": None},
        "Overwrite input": {"inputVolume": node, "outputVolume": node},
        "no-such-bundle": {"inputVolume": node, "model": tmp_path / "no-such-bundle"},
        "device 'gpu'": {"inputVolume": node, "device": "gpu"},
        "strength 2": {"inputVolume": node, "strength": 2},
        "views 3": {"inputVolume": node, "views": 3},
    }
    for message, request in requests.items():
        with pytest.raises(module.ModuleError, match=message):
            logic.process(**request)
    assert scene.GetNumberOfNodes() == nodes


def test_background_run_reports_progress_and_cancels_cleanly(module, scene, ct_volume):
    import qt

    node = volume_node(scene, "CT", np.concatenate([ct_volume] * 8))  # 32 slices: time to cancel mid-run
    nodes = scene.GetNumberOfNodes()
    logic = module.MedDenoiseLogic()
    finished = []
    job = logic.process(
        node, device="cpu", waitForCompletion=False, onFinished=lambda *outcome: finished.append(outcome)
    )
    assert isinstance(job, module.WorkerJob) and not finished  # returned at once, still running
    deadline = time.monotonic() + 300
    while job.progress[0] == 0 and not finished and time.monotonic() < deadline:
        qt.process_events()
        time.sleep(0.05)
    job.cancel()
    while not finished and time.monotonic() < deadline:
        qt.process_events()
        time.sleep(0.05)
    ((result, error),) = finished
    assert result is None and isinstance(error, module.JobCancelledError)
    assert scene.GetNumberOfNodes() == nodes and not qt.ACTIVE_TIMERS


def test_parameter_node_defaults_and_metrics_text(module, scene):
    params = module.MedDenoiseLogic().getParameterNode()
    assert (params.axis, params.strength, params.device, params.useCustomModel) == (
        module.SliceAxis.K,
        1.0,
        "auto",
        False,
    )
    assert params.outputVolume is None and not params.allowInputOverwrite and params.quality == module.Quality.FAST
    assert [quality.value for quality in module.Quality] == [1, 2, 8], "self-ensemble sizes the engine accepts"
    with pytest.raises(ValueError):
        params.strength = 1.5
    result = module.RunResult(None, 1.0, {"before": {"psnr": 20.0, "ssim": 0.5}, "after": {"psnr": 25.5, "ssim": 0.75}})
    assert result.metricsText().startswith("PSNR 20.00 -> 25.50 dB, SSIM 0.500 -> 0.750")
    presets = module.MedDenoiseLogic().noisePresets()
    from scripts.noise import DEFAULT_SETTINGS

    assert presets == list(DEFAULT_SETTINGS)
