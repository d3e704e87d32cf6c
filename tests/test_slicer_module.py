"""MedDenoise.py imported and its Logic driven against the test stand-in of slicer/qt/vtk (tests/slicer_standin, NOT
Slicer): geometry, transform and units survive process(...), the input node is untouched, errors change nothing, and a
background run reports progress and can be cancelled."""

import importlib
import re
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
        for name in [
            n
            for n in sys.modules
            if n.split(".")[0] in ("slicer", "qt", "vtk", "MedDenoise", "PyTorchUtils", "SampleData")
        ]:
            del sys.modules[name]


@pytest.fixture
def scene(module):
    import slicer

    slicer.mrmlScene.Clear()
    slicer.util.slice_viewer_layers.clear()
    slicer.app.testing = False
    slicer.util.environment, slicer.util.confirm_answer = None, True
    slicer.util.installs.clear()
    slicer.util.dialogs.clear()
    return slicer.mrmlScene


@pytest.fixture(scope="module")
def ct_volume(embedded) -> np.ndarray:
    """A real CT (pydicom-data's 2-frame CT is too thin; the 512x512 test CT slice stacked with its flips), int16."""
    from scripts.image_io import read_image

    ct = next(item["image"] for item in embedded["test"] if item["modality"] == "CT")
    image = read_image(ct).array.reshape(-1, 512, 512)[0].astype(np.int16)
    return np.stack([image, image[::-1], image[:, ::-1], image.T])[:, 128:384, 128:384].copy()


def volume_node(scene, name: str, array: np.ndarray, transform: str | None = "vtkMRMLTransformNode7"):
    """A volume as Slicer loads it: voxels, geometry, a parent transform and a display node with a CT window."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.array = array
    node.ijk_to_ras = OBLIQUE.copy()
    node.transform_id = transform
    node.CreateDefaultDisplayNodes()
    node.GetDisplayNode().SetWindowLevel(400.0, 40.0)
    node.GetDisplayNode().SetAutoWindowLevel(False)
    return node


@pytest.mark.slow
def test_process_keeps_geometry_units_and_the_input(module, scene, ct_volume, shipped_model):
    import slicer

    node = volume_node(scene, "CT", ct_volume.copy())
    nodes = scene.GetNumberOfNodes()
    logic = module.MedDenoiseLogic()
    progress = []
    result = logic.process(node, device="cpu", onProgress=lambda job: progress.append(job.progress))

    output = result.volume
    assert scene.GetNumberOfNodes() == nodes + 2 and output.GetName() == "CT (denoised)"  # the volume, its display
    np.testing.assert_array_equal(node.array, ct_volume)  # the input node is untouched
    np.testing.assert_array_equal(node.ijk_to_ras, OBLIQUE)
    np.testing.assert_allclose(output.ijk_to_ras, OBLIQUE)
    assert output.GetTransformNodeID() == node.GetTransformNodeID()
    assert output.array.shape == ct_volume.shape and output.array.dtype == np.int16  # HU stay int16, as the engine
    # The same HU the engine gives in this process: nothing is lost or rescaled in the round trip.
    from scripts.engine import denoise_volume

    expected = denoise_volume(ct_volume, shipped_model).astype(np.int32)
    assert np.abs(output.array.astype(np.int32) - expected).max() <= 1
    assert progress[-1] == (4, 4) and result.seconds > 0
    # The result is shown alone and fully (no 50 % overlay), with the input's window/level for a fair switch.
    assert slicer.util.slice_viewer_layers["background"] is output
    assert slicer.util.slice_viewer_layers["foreground"] is None
    assert (output.GetDisplayNode().GetWindow(), output.GetDisplayNode().GetLevel()) == (400.0, 40.0)
    assert not output.GetDisplayNode().GetAutoWindowLevel()
    module.MedDenoiseLogic.showVolume(node)  # the original/denoised switch
    assert slicer.util.slice_viewer_layers["background"] is node


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


@pytest.mark.slow
def test_closing_the_scene_cancels_a_background_run(module, scene, ct_volume):
    """File > Close Scene while a run is going: the job is killed, its result never lands in the next scene."""
    import qt

    node = volume_node(scene, "CT", np.concatenate([ct_volume] * 8))  # 32 slices: time to close mid-run
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
    scene.Clear()
    assert job.cancelled and job.process.poll() is not None
    while not finished and time.monotonic() < deadline:
        qt.process_events()
        time.sleep(0.05)
    ((result, error),) = finished
    assert result is None and isinstance(error, module.JobCancelledError)
    assert scene.GetNumberOfNodes() == 0 and not qt.ACTIVE_TIMERS and not scene.observers


@pytest.mark.slow
def test_a_result_slicer_refuses_still_ends_the_job(module, scene, ct_volume, monkeypatch):
    """updateVolumeFromArray raises RuntimeError in Slicer: the job still finishes (the panel leaves "Cancel") with a
    clear error, and the half-made output volume is removed."""
    import qt
    import slicer

    node = volume_node(scene, "CT", ct_volume[:2, :64, :64].copy())
    nodes = scene.GetNumberOfNodes()

    def refuse(volume, array):
        raise RuntimeError("Unsupported numpy array type: long long")

    monkeypatch.setattr(slicer.util, "updateVolumeFromArray", refuse)
    finished = []
    module.MedDenoiseLogic().process(node, device="cpu", waitForCompletion=False,
                                     onFinished=lambda *outcome: finished.append(outcome))  # fmt: skip
    deadline = time.monotonic() + 300
    while not finished and time.monotonic() < deadline:
        qt.process_events()
        time.sleep(0.05)
    ((result, error),) = finished
    assert result is None and isinstance(error, module.ModuleError) and "long long" in str(error)
    assert scene.GetNumberOfNodes() == nodes and not qt.ACTIVE_TIMERS


def dicom_series(scene, name: str, array: np.ndarray):
    """A volume placed as Slicer's DICOM plugins place a loaded series (``DICOMPlugin.addSeriesInSubjectHierarchy``):
    under a study under a patient, with the series UID and the series attributes the DICOM export reads."""
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Anonymous")
    shNode.SetItemAttribute(patient, "DICOM.PatientID", "MD-0001")
    study = shNode.CreateStudyItem(patient, "CT head")
    shNode.SetItemAttribute(study, "DICOM.StudyInstanceUID", "1.2.826.0.1.3680043.8.498.1")
    node = volume_node(scene, name, array)
    series = shNode.CreateItem(study, node)
    shNode.SetItemUID(series, "DICOM", "1.2.826.0.1.3680043.8.498.2")
    for tag, value in (("Modality", "CT"), ("SeriesNumber", "3"), ("FrameOfReferenceUID", "1.2.826.0.1.3680043.8.498.3"),
                       ("SeriesDescription", "Head 5mm"), ("Manufacturer", "Acme"), ("Model", "Scanner 1")):  # fmt: skip
        shNode.SetItemAttribute(series, "DICOM." + tag, value)
    return node, study, patient


def exported_series_tags(shNode, item) -> dict:
    """The series tags Slicer's DICOM export would write for ``item``, read as Slicer 5.10-5.13 reads them
    (``qSlicerDICOMTagEditorWidget::setExportables``: a ``DICOM.<tag>`` series attribute wins over the scalar-volume
    plugin's default; ``DICOMScalarVolumePlugin.export``: a study parent and a patient grandparent are required, an
    empty SeriesInstanceUID means a new series)."""
    study = shNode.GetItemParent(item)
    assert study and shNode.GetItemLevel(study) == "Study", "Export fails: 'Unable to get study for series'"
    assert shNode.GetItemParent(study) and shNode.GetItemLevel(shNode.GetItemParent(study)) == "Patient"
    defaults = {"SeriesDescription": "No series description", "Modality": "CT", "Manufacturer": "Unknown manufacturer",
                "Model": "Unknown model", "SeriesNumber": "301", "SeriesInstanceUID": "", "FrameOfReferenceUID": ""}  # fmt: skip
    return {tag: shNode.GetItemAttribute(item, "DICOM." + tag) if shNode.HasItemAttribute(item, "DICOM." + tag)
            else default for tag, default in defaults.items()}  # fmt: skip


@pytest.mark.slow
def test_result_sits_in_the_input_study_ready_for_dicom_export(module, scene, ct_volume):
    import slicer

    node, study, _ = dicom_series(scene, "3: Head 5mm", ct_volume[:2, :64, :64].copy())
    logic = module.MedDenoiseLogic()
    output = logic.process(node, device="cpu").volume
    noisy = logic.addNoise(node, "gaussian:factor=0.1,mean=0,std=1").volume
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(output)
    assert output.GetName() == "3: Head 5mm (denoised)" and noisy.GetName() == "3: Head 5mm (noisy)"
    assert shNode.GetItemParent(item) == study and shNode.GetItemParent(shNode.GetItemByDataNode(noisy)) == study
    tags = exported_series_tags(shNode, item)
    assert tags["Modality"] == "CT" and tags["FrameOfReferenceUID"] == "1.2.826.0.1.3680043.8.498.3"  # same grid
    assert tags["SeriesDescription"] == "Head 5mm MedDenoise"  # as scripts/denoise.py describes a derived series
    from scripts.dicom_writer import SERIES_NUMBER_OFFSET

    assert module.SERIES_NUMBER_OFFSET == SERIES_NUMBER_OFFSET and tags["SeriesNumber"] == "1003"
    assert tags["SeriesInstanceUID"] == "" and shNode.GetItemUID(item, "DICOM") == ""  # a new series, not the input's
    assert tags["Manufacturer"] == "Unknown manufacturer"  # the scanner did not make this series
    assert exported_series_tags(shNode, shNode.GetItemByDataNode(noisy))["SeriesDescription"].startswith(
        "Head 5mm synthetic noise"
    )

    # A volume loaded from a file sits under the scene; so does its result (nothing to export into).
    plain = volume_node(scene, "MR", ct_volume[:2, :64, :64].copy())
    result = logic.process(plain, device="cpu").volume
    assert shNode.GetItemParent(shNode.GetItemByDataNode(result)) == shNode.GetSceneItemID()


@pytest.mark.slow
def test_output_made_by_the_selector_gets_a_display_node(module, scene, ct_volume):
    node = volume_node(scene, "CT", ct_volume[:2, :64, :64].copy())
    created = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "made by Create new")  # no display node, as in Slicer
    output = module.MedDenoiseLogic().process(node, created, device="cpu").volume
    assert output is created and output.GetDisplayNode() is not None
    assert output.GetDisplayNode().GetWindow() == 400.0


def test_slice_directions_are_named_by_their_anatomical_plane(module):
    assert module.slicePlaneLabels(np.diag([-0.5, -0.5, 2.0, 1.0])) == [
        "Axial (as acquired)",
        "Coronal (resliced)",
        "Sagittal (resliced)",
    ]
    assert module.slicePlaneLabels(OBLIQUE) == ["Sagittal (as acquired)", "Coronal (resliced)", "Axial (resliced)"]


def test_gpu_probe_runs_in_a_worker(module, scene):
    import torch

    probe = module.MedDenoiseLogic().probeProcessor(waitForCompletion=True)
    assert probe["cuda"] == torch.cuda.is_available() and probe["torch"] == torch.__version__


def test_parameter_node_defaults_and_metrics_text(module, scene):
    params = module.MedDenoiseLogic().getParameterNode()
    assert (params.axis, params.strength, params.processor, params.modelPath) == (
        module.SliceAxis.K,
        1.0,
        module.Processor.AUTO,
        "",  # the shipped model; a Path field would show "." in the path box
    )
    assert params.outputVolume is None and not params.allowInputOverwrite and params.views == module.Views.FAST
    assert [views.value for views in module.Views] == [1, 2, 8], "self-ensemble sizes the engine accepts"
    assert [processor.label() for processor in module.Processor] == ["Automatic", "CPU", "NVIDIA GPU"]
    assert module.DEVICES == ["auto", "cpu", "cuda"]
    # Slicer's serializers check types and ranges; every field has a range or a fixed set of values.
    for field, bad, error in (("strength", 1.5, ValueError), ("strength", None, ValueError),
                              ("adaptSeconds", 0.5, TypeError), ("noiseSeed", -1, ValueError),
                              ("noiseSeed", 10**7, ValueError), ("views", 2, TypeError),
                              ("modelPath", None, ValueError)):  # fmt: skip
        with pytest.raises(error):
            setattr(params, field, bad)
    result = module.RunResult(None, 1.0, {"before": {"psnr": 20.0, "ssim": 0.5}, "after": {"psnr": 25.5, "ssim": 0.75}})
    assert result.metricsText().startswith("PSNR 20.00 -> 25.50 dB, SSIM 0.500 -> 0.750")
    presets = module.MedDenoiseLogic().noisePresets()
    from scripts.noise import DEFAULT_SETTINGS

    assert presets == list(DEFAULT_SETTINGS)
    assert params.noiseSpec in presets and params.noiseSpec == module.DEFAULT_NOISE  # the preset box shows the spec


@pytest.fixture
def environment(module, scene, monkeypatch):
    """An imitated Python environment holding what Slicer bundles and nothing the worker needs; the module's
    requirement check reads it, the stand-in installers write it."""
    import slicer
    from packaging.requirements import Requirement

    slicer.util.environment = {"numpy", "scipy", "simpleitk", "pydicom", "requests"}
    monkeypatch.setattr(
        module, "unmet", lambda specs: [s for s in specs if Requirement(s).name.lower() not in slicer.util.environment]
    )
    return slicer.util.environment


def test_installs_torch_first_then_the_rest_with_torch_pinned(module, environment):
    import slicer

    assert "slicer.packaging" not in sys.modules  # Slicer never imports it; the module must import it itself
    module.MedDenoiseLogic().ensureDependencies()
    (torch, *_), (ensure, packages, options) = slicer.util.installs[0][1], slicer.util.installs[1]
    assert slicer.util.installs[0][0] == "PyTorchUtils.installTorch" and torch.startswith("torch>=2.13")
    assert ensure == "slicer.packaging.pip_install"
    assert {p.split(">")[0] for p in packages} == {"monai", "pyyaml", "PyWavelets", "tqdm"}
    assert options["constraints"] is not None  # torch pinned: pip may not swap the GPU build for PyPI's
    assert {"torch", "monai", "pyyaml", "pywavelets", "tqdm"} <= environment


def test_slicer_5_10_installs_through_pip_install_after_asking(module, environment, monkeypatch):
    import slicer

    environment.add("torch")
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer 5.10 has no slicer.packaging
    module.MedDenoiseLogic().ensureDependencies()
    ((installer, arguments, _),) = slicer.util.installs
    assert installer == "slicer.util.pip_install" and len(slicer.util.dialogs) == 1
    assert arguments[-2] == "--constraint"


def test_declining_pytorch_stops_before_anything_else(module, environment):
    import slicer

    slicer.util.confirm_answer = False
    with pytest.raises(module.ModuleError, match="without PyTorch"):
        module.MedDenoiseLogic().ensureDependencies()
    assert slicer.util.installs == [] and len(slicer.util.dialogs) == 1  # no MONAI prompt after the refusal


def test_declining_the_other_packages_is_a_clear_error(module, environment):
    import slicer

    environment.add("torch")
    slicer.util.confirm_answer = False
    with pytest.raises(module.ModuleError, match="cannot run without monai"):
        module.MedDenoiseLogic().ensureDependencies()
    assert slicer.util.installs == []


def test_testing_mode_installs_nothing_and_the_self_test_still_runs(module, environment, embedded, tmp_path, capsys):
    """``Slicer --testing``: PyTorchUtils would install torch without asking, pip_ensure would skip silently. The
    module refuses with a message, and the self-test runs its error checks and says what it left out."""
    import SampleData
    import slicer

    slicer.app.testing = True
    with pytest.raises(module.ModuleError, match="testing mode installs nothing"):
        module.MedDenoiseLogic().ensureDependencies()
    SampleData.files["MedDenoiseMRHead"] = mni_file(embedded, tmp_path)
    test = module.MedDenoiseTest()
    test.runTest()
    assert slicer.util.installs == [] and slicer.util.dialogs == []
    assert "Denoising left out: torch>=2.13" in capsys.readouterr().out


@pytest.mark.slow
def test_self_test_denoises_when_the_packages_are_there(module, scene, embedded, tmp_path):
    """The Slicer self-test itself, in testing mode, on the stand-in: PSNR rises on a real MR slab."""
    import SampleData
    import slicer

    slicer.app.testing = True
    SampleData.files["MedDenoiseMRHead"] = mni_file(embedded, tmp_path)
    module.MedDenoiseTest().runTest()
    names = {node.GetName() for node in scene.nodes}
    assert {"MRHeadSlab (noisy)", "MRHeadSlab (noisy) (denoised)"} <= names
    assert slicer.util.installs == []


def mni_file(embedded, tmp_path) -> Path:
    import SimpleITK as sitk

    mni = next(item["image"] for item in embedded["training"] if item["image"].endswith((".nii", ".nii.gz")))
    path = tmp_path / "mni.nrrd"
    sitk.WriteImage(sitk.ReadImage(mni), str(path))
    return path


def test_slicer_5_8_gets_told_to_upgrade(module, scene, monkeypatch):
    monkeypatch.setattr(module, "MINIMUM_PYTHON", (99, 0))
    with pytest.raises(module.ModuleError, match=r"needs 3D Slicer 5\.10 or later"):
        module.MedDenoiseLogic().ensureDependencies()


def pump(qt, until, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        qt.process_events()
        time.sleep(0.05)
    assert until(), "timed out"


@pytest.mark.slow
def test_panel_runs_a_job_shows_its_log_and_switches_original_and_result(module, scene, ct_volume):
    """The widget on the .ui's widgets (stand-in: only properties and signals PythonQt has): Apply becomes Cancel
    and back, the log fills, GPU presence is reported, and the result can be compared with one click each way."""
    import qt
    import slicer
    import torch

    node = volume_node(scene, "CT", ct_volume[:2, :64, :64].copy())
    widget = module.MedDenoiseWidget()
    widget.setup()
    ui = widget.ui
    assert widget._parameterNode.inputVolume is node and ui.noticeLabel.text == module.NOT_FOR_DIAGNOSIS
    assert not ui.progressBar.textVisible and not ui.compareButton.enabled and ui.applyButton.enabled
    assert ui.noisePresetComboBox.itemText(ui.noisePresetComboBox.currentIndex) == module.DEFAULT_NOISE
    assert [ui.axisComboBox.itemText(i) for i in range(3)] == module.slicePlaneLabels(OBLIQUE)
    pump(qt, lambda: not ui.gpuLabel.text.startswith("Checking"))
    assert ui.gpuLabel.text == (
        f"NVIDIA GPU found: {torch.cuda.get_device_name(0)}"
        if torch.cuda.is_available()
        else "No NVIDIA GPU found: runs on the CPU"
    )

    widget._parameterNode.processor = module.Processor.CPU
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel" and ui.progressBar.textVisible and not ui.addNoiseButton.enabled
    pump(qt, lambda: ui.applyButton.text == "Apply")
    result = scene.nodes[-1]
    assert re.match(r"Done in [\d.]+ s on CPU: CT \(denoised\); input ", ui.statusLabel.text), ui.statusLabel.text
    assert "Denoising on CPU" in ui.logTextEdit.plainText and not qt.ACTIVE_TIMERS
    assert slicer.util.slice_viewer_layers["background"].GetName() == "CT (denoised)"
    assert ui.compareButton.enabled and ui.compareButton.text == "Show original"
    ui.compareButton.click()
    assert slicer.util.slice_viewer_layers["background"] is node and ui.compareButton.text == "Show denoised"
    ui.compareButton.click()
    assert slicer.util.slice_viewer_layers["background"].GetName() == "CT (denoised)" and result is not node

    # A failing run ends with the panel back on Apply and the reason in the log.
    ui.noisePresetComboBox.choose(0)
    assert widget._parameterNode.noiseSpec == ui.noisePresetComboBox.itemText(0)
    widget._parameterNode.modelPath = str(ROOT / "no-such-bundle")
    widget.updateGUI()
    assert "no-such-bundle" in ui.modelInfoLabel.text and ui.modelPathLineEdit.currentPath.endswith("no-such-bundle")
    with pytest.raises(module.ModuleError):
        ui.applyButton.click()  # Slicer's tryWithErrorDisplay shows the error and raises it again
    assert ui.applyButton.text == "Apply" and slicer.util.dialogs

    # Closing the scene during a run cancels it; the panel comes back on Apply with a fresh parameter node.
    widget._parameterNode.modelPath = ""
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel"
    scene.Clear()
    pump(qt, lambda: ui.applyButton.text == "Apply")
    assert ui.statusLabel.text == "Cancelled; nothing was changed." and not ui.compareButton.enabled
    assert scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode") is None and not qt.ACTIVE_TIMERS
    widget.cleanup()
