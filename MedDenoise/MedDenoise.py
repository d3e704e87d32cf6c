"""MedDenoise: deep-learning denoising of a loaded CT, MR or X-ray volume in 3D Slicer (5.10 or later).

The heavy work runs in a separate Python process (``MedDenoiseLib/worker.py`` on the bundle's engine), so the viewer
never freezes and Cancel can stop a run at once. The volume travels as a temporary NRRD file with its geometry; the
result is read back into a volume that copies the input's geometry and sits beside the input in the subject hierarchy
(under its DICOM study, ready for the DICOM module's export).
"""

from __future__ import annotations  # annotations stay text: the module still loads on Slicer 5.8 to say it is too old

import dataclasses
import enum
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from MedDenoiseLib import (
    JobCancelledError,
    ModelInfo,
    ModuleError,
    WorkerJob,
    find_shipped_bundle,
    read_model_info,
    read_volume_file,
    requirements,
    unmet,
    worker_command,
    write_volume_file,
)
from MedDenoiseLib.dependencies import WORKER_PACKAGES
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
#: A sample to try the module on (Slicer's MRHead testing data).
SAMPLE_URL = "https://github.com/Slicer/SlicerTestingData/releases/download/MD5/39b01631b7b38232a220007230624c8e"
SAMPLE_CHECKSUM = "MD5:39b01631b7b38232a220007230624c8e"
#: PyTorch 2.13 and MONAI 1.6 need Python 3.10; Slicer 5.8 has Python 3.9, Slicer 5.10 and later Python 3.12.
MINIMUM_PYTHON = (3, 10)
SLICER_TOO_OLD = (
    "MedDenoise needs 3D Slicer 5.10 or later (this Slicer's Python {version} is too old for PyTorch and MONAI); "
    "install the current Slicer from download.slicer.org"
)
NOT_FOR_DIAGNOSIS = "For research and viewing only; not for diagnosis."
#: A derived series is numbered its source's number plus this, as ``scripts/denoise.py`` numbers the DICOM it writes
#: (the bundle's ``dicom_writer.SERIES_NUMBER_OFFSET``; the Slicer process does not import the bundle).
SERIES_NUMBER_OFFSET = 1000
#: The add-noise default: the dental X-ray seed's noise, one of the benchmark's presets.
DEFAULT_NOISE = "gaussian:factor=0.1,mean=0,std=1"


class MedDenoise(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "MedDenoise"
        self.parent.categories = ["Filtering.Denoising"]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDenoise developers"]
        self.parent.helpText = f"""
Removes noise from a CT, MR or X-ray volume with a deep-learning model (a MONAI bundle), slice by slice.
Choose the input volume and press Apply; the result "&lt;input&gt; (denoised)" has the same geometry and units and is
placed beside the input (under its study). "Show original" switches the views between the two. The first Apply asks to
install PyTorch and MONAI. Needs Slicer 5.10 or later. {NOT_FOR_DIAGNOSIS}
"""
        self.parent.acknowledgementText = """
Built on MONAI, PyTorch, SimpleITK and the 3D Slicer scripted-module template (Jean-Christophe Fillion-Robin, Kitware,
Andras Lasso, PerkLab, and Steve Pieper, Isomics, funded in part by NIH grant 3P41RR013218-12S1).
"""
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Add an MR head to the Sample Data module under "MedDenoise" to try the module on."""
    import SampleData

    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="MedDenoise",
        sampleName="MedDenoiseMRHead",
        thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "MedDenoise.png"),
        uris=SAMPLE_URL,
        fileNames="MR-head.nrrd",
        checksums=SAMPLE_CHECKSUM,
        nodeNames="MRHead",
    )


class SliceAxis(enum.Enum):
    """Axis of the K x J x I voxel array the 2D model slides along; K is the acquisition plane (no resampling).

    The panel names each axis by its anatomical plane for the chosen volume (:func:`slicePlaneLabels`).
    """

    K = 0
    J = 1
    I = 2  # noqa: E741 - the IJK axis name

    def label(self) -> str:
        return {0: "As acquired", 1: "Resliced (rows)", 2: "Resliced (columns)"}[self.value]


class Views(enum.Enum):
    """How many flips/rotations of each slice the model sees and averages: the engine's ``views`` (self-ensemble),
    labelled by the quality they buy."""

    FAST = 1
    BETTER = 2
    BEST = 8

    def label(self) -> str:
        return {1: "Fast", 2: "Better (2x time)", 8: "Best (8x time)"}[self.value]


class Processor(enum.Enum):
    """Where the model runs: the engine's ``device`` (``auto`` takes an NVIDIA GPU when PyTorch sees one)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return {"auto": "Automatic", "cpu": "CPU", "cuda": "NVIDIA GPU"}[self.value]


DEVICES = [processor.value for processor in Processor]


def slicePlaneLabels(ijkToRas: np.ndarray) -> list[str]:
    """Panel labels of the K, J, I axes for a 4x4 IJK-to-RAS matrix, e.g. ``["Axial (as acquired)", "Coronal
    (resliced)", "Sagittal (resliced)"]``: each array axis runs across the plane its RAS direction is normal to."""
    planes = ("Sagittal", "Coronal", "Axial")  # normal to R, A, S
    labels = []
    for axis, column in ((0, 2), (1, 1), (2, 0)):  # K, J, I are matrix columns 2, 1, 0
        plane = planes[int(np.argmax(np.abs(np.asarray(ijkToRas)[:3, column])))]
        labels.append(f"{plane} ({'as acquired' if axis == 0 else 'resliced'})")
    return labels


@parameterNodeWrapper
class MedDenoiseParameterNode:
    """The panel's state, saved with the scene.

    inputVolume: the volume to denoise. outputVolume: where the result goes; none = a new volume each run.
    strength: 0 (original) .. 1 (fully denoised). views: self-ensemble size (the panel's *Quality*).
    Advanced: modelPath (a bundle folder or .zip; empty = the shipped model; not bound by name because a ``Path``
    parameter shows an empty path as "."), referenceVolume (clean volume for PSNR/SSIM), adaptSeconds, processor,
    axis, allowInputOverwrite (the only way the input volume can be the output).
    noiseSpec/noiseSeed: the add-noise utility (spec syntax of the bundle's ``scripts.noise``).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    strength: Annotated[float, WithinRange(0.0, 1.0)] = 1.0
    views: Views = Views.FAST
    modelPath: str = ""
    referenceVolume: vtkMRMLScalarVolumeNode
    adaptSeconds: Annotated[int, WithinRange(0, 3600)] = 0
    processor: Processor = Processor.AUTO
    axis: SliceAxis = SliceAxis.K
    allowInputOverwrite: bool = False
    noiseSpec: str = DEFAULT_NOISE
    noiseSeed: Annotated[int, WithinRange(0, 1_000_000)] = 0


@dataclasses.dataclass
class RunResult:
    """What a finished job produced: the output volume, its scores against the reference (if any) and the time taken."""

    volume: vtkMRMLScalarVolumeNode
    seconds: float
    metrics: dict = dataclasses.field(default_factory=dict)
    noise: str = ""
    device: str = ""

    def metricsText(self) -> str:
        """``PSNR 24.1 -> 31.0 dB, SSIM 0.52 -> 0.83`` (input -> output against the reference); empty without one."""
        if not self.metrics:
            return ""
        before, after = self.metrics["before"], self.metrics["after"]
        return (
            f"PSNR {before['psnr']:.2f} -> {after['psnr']:.2f} dB, "
            f"SSIM {before['ssim']:.3f} -> {after['ssim']:.3f} (input -> output vs. reference)"
        )


class MedDenoiseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._logShown = 0
        #: (input, result) of the last run, for the original/denoised switch.
        self._comparison = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MedDenoiseLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.noticeLabel.text = NOT_FOR_DIAGNOSIS
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.compareButton.connect("toggled(bool)", self.onCompare)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPath)
        self.ui.addNoiseButton.connect("clicked(bool)", self.onAddNoiseButton)
        self.ui.noisePresetComboBox.addItems(self.logic.noisePresets())
        self.ui.noisePresetComboBox.connect("activated(int)", self.onNoisePreset)
        self.initializeParameterNode()
        self.probeProcessor()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        # The logic cancels a running job itself (its result must not land in the next scene).
        self._comparison = None
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def updateGUI(self, caller=None, event=None) -> None:
        """Enable what can be used now, name the slice directions, say which model runs (or why it cannot)."""
        params = self._parameterNode
        if params is None:  # the module was left or the scene closed; enter() connects a node again
            return
        running = self._job is not None
        self.ui.modelInfoLabel.text = self._modelDescription()
        if self.ui.modelPathLineEdit.currentPath != params.modelPath:
            self.ui.modelPathLineEdit.currentPath = params.modelPath
        if params.inputVolume and params.inputVolume.GetImageData() is not None:
            matrix = vtk.vtkMatrix4x4()
            params.inputVolume.GetIJKToRASMatrix(matrix)
            for index, text in enumerate(slicePlaneLabels(slicer.util.arrayFromVTKMatrix(matrix))):
                self.ui.axisComboBox.setItemText(index, text)
        presetIndex = self.ui.noisePresetComboBox.findText(params.noiseSpec)
        self.ui.noisePresetComboBox.setCurrentIndex(presetIndex)  # -1 (blank) for a spec that is no preset
        self.ui.applyButton.text = "Cancel" if running else "Apply"
        self.ui.applyButton.enabled = running or bool(params.inputVolume)
        self.ui.applyButton.toolTip = "Stop the running job" if running else "Denoise the input volume"
        self.ui.addNoiseButton.enabled = not running and bool(params.inputVolume)
        self.ui.progressBar.textVisible = running  # an idle bar reads "0%" otherwise
        self.ui.compareButton.enabled = self._comparison is not None and not running

    def _modelDescription(self) -> str:
        try:
            return self.logic.modelInfo(self._parameterNode.modelPath or None).description
        except ModuleError as error:
            return str(error)

    def probeProcessor(self) -> None:
        """Say next to "Processor" whether an NVIDIA GPU is there (asked in the background; torch may be missing)."""
        self.ui.gpuLabel.text = "Checking for an NVIDIA GPU..."
        try:
            self.logic.probeProcessor(onFinished=self.onProcessorProbed)
        except ModuleError as error:
            self.ui.gpuLabel.text = str(error)

    def onProcessorProbed(self, probe: dict | None, error: Exception | None) -> None:
        if error is not None:
            self.ui.gpuLabel.text = "Not checked: PyTorch is installed at the first Apply"
        elif probe["cuda"]:
            self.ui.gpuLabel.text = f"NVIDIA GPU found: {probe['gpu']}"
        else:
            self.ui.gpuLabel.text = "No NVIDIA GPU found: runs on the CPU"

    def onModelPath(self, path: str) -> None:
        if self._parameterNode is not None:
            self._parameterNode.modelPath = path

    def onNoisePreset(self, index: int) -> None:
        self._parameterNode.noiseSpec = self.ui.noisePresetComboBox.itemText(index)

    def onCompare(self, showOriginal: bool) -> None:
        if self._comparison is None:
            return
        original, denoised = self._comparison
        self.logic.showVolume(original if showOriginal else denoised)
        self.ui.compareButton.text = "Show denoised" if showOriginal else "Show original"

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            return
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Denoising could not start.", waitCursor=True):
            model = params.modelPath or None
            self.logic.ensureDependencies(model)
            self._start(
                self.logic.process(
                    params.inputVolume,
                    params.outputVolume,
                    model=model,
                    axis=params.axis.value,
                    strength=params.strength,
                    adaptSeconds=params.adaptSeconds,
                    views=params.views.value,
                    device=params.processor.value,
                    referenceVolume=params.referenceVolume,
                    allowInputOverwrite=params.allowInputOverwrite,
                    waitForCompletion=False,
                    onProgress=self.onProgress,
                    onFinished=self.onFinished,
                )
            )

    def onAddNoiseButton(self) -> None:
        params = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Adding noise could not start.", waitCursor=True):
            self.logic.ensureDependencies(None)
            self._start(
                self.logic.addNoise(
                    params.inputVolume,
                    params.noiseSpec,
                    seed=params.noiseSeed,
                    waitForCompletion=False,
                    onProgress=self.onProgress,
                    onFinished=self.onFinished,
                )
            )

    def _start(self, job: WorkerJob) -> None:
        self._job = job
        self._logShown = 0
        self.ui.logTextEdit.clear()
        self.ui.progressBar.setValue(0)
        self.ui.statusLabel.text = job.status
        self.ui.metricsLabel.text = ""
        self.updateGUI()

    def onProgress(self, job: WorkerJob) -> None:
        done, total = job.progress
        self.ui.progressBar.setMaximum(max(total, 1))
        self.ui.progressBar.setValue(done)
        self.ui.statusLabel.text = f"{job.status}: {done}/{total} {job.progressUnit}" if total else job.status
        for line in job.transcript[self._logShown :]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logShown = len(job.transcript)

    def onFinished(self, result: RunResult | None, error: Exception | None) -> None:
        self._job = None
        if isinstance(error, JobCancelledError):
            self.ui.statusLabel.text = "Cancelled; nothing was changed."
        elif error is not None:
            self.ui.statusLabel.text = "Failed; nothing was changed (details in the log below)."
            self.ui.logTextEdit.appendPlainText(str(error))
            slicer.util.errorDisplay(str(error), windowTitle="MedDenoise")
        else:
            self.ui.progressBar.setValue(self.ui.progressBar.maximum)
            where = f" on {result.device.upper()}" if result.device else ""
            noise = f"; input {result.noise}" if result.noise else ""
            self.ui.statusLabel.text = f"Done in {result.seconds:.1f} s{where}: {result.volume.GetName()}{noise}"
            self.ui.metricsLabel.text = result.metricsText()
            params = self._parameterNode
            if params is not None and result.volume is not params.inputVolume:
                self._comparison = (params.inputVolume, result.volume)
                self.ui.compareButton.checked = False
                self.ui.compareButton.text = "Show original"
        self.updateGUI()


class MedDenoiseLogic(ScriptedLoadableModuleLogic):
    """Denoising and noise utilities on volume nodes; works without the GUI (scripts, tests, batch).

    Every run writes the input to a temporary NRRD, runs the worker and only then touches the scene, so a failed or
    cancelled run leaves the scene unchanged. Closing the scene cancels a running job.
    """

    #: How often (ms) a background run is checked for progress.
    POLL_INTERVAL_MS = 100

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.bundle = find_shipped_bundle(MODULE_DIR)

    def getParameterNode(self):
        return MedDenoiseParameterNode(super().getParameterNode())

    def modelInfo(self, model: str | os.PathLike | None = None) -> ModelInfo:
        """The validated metadata of ``model`` (a bundle folder or .zip), or of the shipped model."""
        return read_model_info(model or self.bundle)

    def noisePresets(self) -> list[str]:
        """The benchmark's noise settings (the bundle's ``scripts.noise.DEFAULT_SETTINGS``), read without importing."""
        import ast

        source = (self.bundle / "scripts" / "noise.py").read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", "") == "DEFAULT_SETTINGS":
                return list(ast.literal_eval(node.value))
        return []

    def missingPackages(self, model: str | os.PathLike | None = None) -> list[str]:
        """The worker's requirements (pip syntax) this Slicer does not meet yet.

        Raises:
            ModuleError: this Slicer's Python is too old for the worker (Slicer before 5.10).
        """
        if sys.version_info < MINIMUM_PYTHON:
            raise ModuleError(SLICER_TOO_OLD.format(version=".".join(map(str, sys.version_info[:3]))))
        return unmet(list(requirements(self.modelInfo(model).metadata).values()))

    def ensureDependencies(self, model: str | os.PathLike | None = None) -> None:
        """Install what the worker needs, after asking the user; never called at import time, never in testing mode.

        Torch comes first, from the PyTorch extension (``PyTorchUtils``, which matches it to the GPU); the other
        packages then install with that torch pinned, so pip cannot replace it with a CPU build from PyPI. They go
        through ``slicer.packaging.pip_ensure`` (Slicer 5.12+) or, on 5.10, ``pip_install`` after a confirmation.
        Versions follow the model's metadata.

        Raises:
            ModuleError: the user declined, testing mode is on, or the installation did not satisfy the requirements.
        """
        missing = self.missingPackages(model)
        if not missing:
            return
        if slicer.app.testingEnabled():  # PyTorchUtils would install without asking, pip_ensure would skip
            raise ModuleError(f"testing mode installs nothing, and {', '.join(missing)} are missing")
        specs = requirements(self.modelInfo(model).metadata)
        if specs["torch"] in missing:
            self._installTorch(specs["torch"])
        packages = unmet([specs[name] for name in WORKER_PACKAGES])
        if packages:
            self._installPackages(packages)
        still = unmet(list(specs.values()))
        if still:
            raise ModuleError(
                f"MedDenoise cannot run without {', '.join(still)}; apply again and accept the installation, or "
                "install them from the Python console with slicer.util.pip_install"
            )

    @staticmethod
    def _installTorch(spec: str) -> None:
        try:
            import PyTorchUtils
        except ImportError:
            raise ModuleError(
                "PyTorch is missing; install the PyTorch extension from the Extensions Manager and restart Slicer"
            ) from None
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
            askConfirmation=True, torchVersionRequirement=spec[len("torch") :]
        )
        if torch is None:  # declined: installTorch returns None rather than raising
            raise ModuleError("MedDenoise cannot run without PyTorch; apply again and accept its installation")

    @staticmethod
    def _installPackages(packages: list[str]) -> None:
        import importlib.metadata

        constraints = Path(tempfile.mkdtemp(prefix="MedDenoise")) / "constraints.txt"
        constraints.write_text(f"torch=={importlib.metadata.version('torch')}\n")
        try:
            try:
                import slicer.packaging as slicerPackaging  # Slicer 5.12+; Slicer does not import it by itself
            except ImportError:  # Slicer 5.10
                if not slicer.util.confirmOkCancelDisplay(
                    f"MedDenoise needs these Python packages: {', '.join(packages)}. Install them now?",
                    windowTitle="MedDenoise",
                ):
                    raise ModuleError("MedDenoise cannot run without " + ", ".join(packages)) from None
                slicer.util.pip_install([*packages, "--constraint", str(constraints)])
                return
            try:
                slicerPackaging.pip_ensure(packages, constraints=constraints, requester="MedDenoise")
            except RuntimeError as declined:
                raise ModuleError(f"MedDenoise cannot run without {', '.join(packages)} ({declined})") from None
        finally:
            shutil.rmtree(constraints.parent, ignore_errors=True)

    def process(
        self,
        inputVolume,
        outputVolume=None,
        model: str | os.PathLike | None = None,
        axis: int = 0,
        strength: float = 1.0,
        adaptSeconds: float = 0.0,
        views: int = 1,
        device: str = "auto",
        referenceVolume=None,
        allowInputOverwrite: bool = False,
        showResult: bool = True,
        waitForCompletion: bool = True,
        onProgress: Callable[[WorkerJob], None] | None = None,
        onFinished: Callable[[RunResult | None, Exception | None], None] | None = None,
    ):
        """Denoise ``inputVolume`` into ``outputVolume`` (``None``: a new volume named ``<input> (denoised)``).

        The output gets the input's geometry, parent transform, units and window/level; its dtype follows the engine
        (the input's). It is placed beside the input in the subject hierarchy (under its DICOM study) with the series
        attributes Slicer's DICOM export reads; ``showResult`` shows it alone in the slice views (:meth:`showVolume`
        switches back to the input).

        Args:
            model: a bundle folder or .zip; ``None`` for the shipped model.
            axis: 0, 1 or 2 — the K, J or I axis of the voxel array to slide the 2D model along.
            strength: 0 (original) .. 1 (fully denoised).
            adaptSeconds: first fine-tune a copy of the model on this scan's own noise for this long (0 = off).
            views: self-ensemble size, 1, 2, 4 or 8: the model sees that many flips/rotations of each slice and the
                results are averaged (cleaner, ``views`` times the time).
            device: ``auto``, ``cpu`` or ``cuda``.
            referenceVolume: a clean volume of the same shape; PSNR/SSIM before and after go to the result.
            allowInputOverwrite: required to write into the input volume itself.
            waitForCompletion: block and return a :class:`RunResult`; otherwise return the running
                :class:`WorkerJob` at once (``cancel()`` stops it) and report through ``onProgress(job)`` and
                ``onFinished(result, error)``.

        Raises:
            ModuleError: bad input, model or options (before anything runs); with ``waitForCompletion`` also a failed
                or cancelled run.
        """
        self.checkInput(inputVolume)
        if outputVolume is inputVolume and not allowInputOverwrite:
            raise ModuleError(
                "the output volume is the input volume; choose another output (or 'Create new volume'), or tick "
                "'Overwrite input' under Advanced to replace the input on purpose"
            )
        if referenceVolume is not None:
            self.checkInput(referenceVolume, "reference")
        if device not in DEVICES:
            raise ModuleError(f"device {device!r} is not one of {', '.join(DEVICES)}")
        if not 0.0 <= strength <= 1.0:
            raise ModuleError(f"strength {strength} must be between 0 (original) and 1 (fully denoised)")
        if views not in (1, 2, 4, 8):
            raise ModuleError(f"views {views} must be 1, 2, 4 or 8 (flips/rotations averaged)")
        if model is not None:
            model = self.modelInfo(model).path
        workdir = Path(slicer.util.tempDirectory("MedDenoise"))
        inputFile = self._writeVolume(inputVolume, workdir / "input.nrrd")
        referenceFile = self._writeVolume(referenceVolume, workdir / "reference.nrrd") if referenceVolume else None
        resultFile = workdir / "denoised.nrrd"
        options = {"model": model, "device": device, "reference": referenceFile, "axis": axis, "strength": strength}
        if views > 1:
            options["views"] = views
        if adaptSeconds > 0:
            options["adapt_seconds"] = adaptSeconds
        command = self._command("denoise", input=inputFile, output=resultFile, **options)

        def apply(job: WorkerJob) -> RunResult:
            volume = self._importResult(resultFile, inputVolume, outputVolume, f"{inputVolume.GetName()} (denoised)")
            if volume is not inputVolume:
                self._placeBesideInput(volume, inputVolume, "MedDenoise")
            if showResult:
                self.showVolume(volume)
            return RunResult(
                volume, job.elapsed, job.metrics, noise=job.result.get("noise", ""), device=job.result.get("device", "")
            )

        return self._run(command, device, workdir, apply, waitForCompletion, onProgress, onFinished)

    def addNoise(
        self,
        inputVolume,
        noiseSpec: str,
        seed: int = 0,
        waitForCompletion: bool = True,
        onProgress: Callable[[WorkerJob], None] | None = None,
        onFinished: Callable[[RunResult | None, Exception | None], None] | None = None,
    ):
        """A new float volume ``<input> (noisy)`` beside the input: the input plus synthetic noise (``noiseSpec``, e.g.
        ``gaussian:factor=0.1``) drawn on the [0, 1] scale of the input's intensity window. Returns like
        :meth:`process`."""
        self.checkInput(inputVolume)
        workdir = Path(slicer.util.tempDirectory("MedDenoise"))
        inputFile = self._writeVolume(inputVolume, workdir / "input.nrrd")
        resultFile = workdir / "noisy.nrrd"
        command = self._command("add-noise", input=inputFile, output=resultFile, noise=noiseSpec, seed=seed)

        def apply(job: WorkerJob) -> RunResult:
            volume = self._importResult(resultFile, inputVolume, None, f"{inputVolume.GetName()} (noisy)")
            self._placeBesideInput(volume, inputVolume, f"synthetic noise {noiseSpec}")
            return RunResult(volume, job.elapsed)

        return self._run(command, "cpu", workdir, apply, waitForCompletion, onProgress, onFinished)

    def probeProcessor(
        self, onFinished: Callable[[dict | None, Exception | None], None] | None = None, waitForCompletion=False
    ):
        """Whether PyTorch sees an NVIDIA GPU, asked of a worker (``{"cuda": bool, "gpu": name, "torch": version}``),
        so that torch is never imported into Slicer's own process. Returns like :meth:`process`."""
        return self._run(
            self._command("probe"), "auto", None, lambda job: job.result, waitForCompletion, None, onFinished
        )

    @staticmethod
    def showVolume(volume) -> None:
        """Show ``volume`` alone, fully, in every slice view (the original/denoised switch)."""
        slicer.util.setSliceViewerLayers(background=volume, foreground=None)

    @staticmethod
    def checkInput(volume, role: str = "input") -> None:
        """A single-component 3D scalar volume with voxels, or a :class:`ModuleError` that says what is wrong."""
        if volume is None:
            raise ModuleError(f"no {role} volume; load a CT, MR or X-ray volume and choose it as the {role}")
        name = volume.GetName()
        if volume.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ModuleError(f"'{name}' is a label map (a segmentation), not an image; choose a grey-level volume")
        if not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLVectorVolumeNode"):
            raise ModuleError(
                f"'{name}' is a {volume.GetClassName()}; MedDenoise denoises single-component scalar volumes — "
                "convert colour or multi-component (4D) volumes to one scalar volume first"
            )
        imageData = volume.GetImageData()
        if imageData is None or 0 in imageData.GetDimensions():
            raise ModuleError(f"'{name}' has no voxels; load the image data first")
        if imageData.GetNumberOfScalarComponents() != 1:
            raise ModuleError(
                f"'{name}' has {imageData.GetNumberOfScalarComponents()} components per voxel; choose a scalar volume"
            )

    @staticmethod
    def _writeVolume(volume, path: Path) -> Path:
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        return write_volume_file(path, slicer.util.arrayFromVolume(volume), slicer.util.arrayFromVTKMatrix(matrix))

    def _command(self, action: str, **options) -> list[str]:
        # PythonSlicer runs Slicer's Python with Slicer's packages; outside Slicer (tests) this very interpreter.
        python = shutil.which("PythonSlicer") or sys.executable
        return worker_command(python, self.bundle, action, **options)

    @staticmethod
    def _importResult(resultFile: Path, inputVolume, outputVolume, name: str):
        """Read the worker's result into ``outputVolume`` (``None``: a new clone of the input's geometry), shown with
        the input's window/level and colours so that switching between them compares like with like."""
        array, resultMatrix = read_volume_file(resultFile)
        inputMatrix = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(inputMatrix)
        if not np.allclose(resultMatrix, slicer.util.arrayFromVTKMatrix(inputMatrix), atol=1e-4):
            raise ModuleError("the worker's result lost the input's geometry; nothing was changed (please report)")
        created = outputVolume is None
        if created:
            outputVolume = slicer.modules.volumes.logic().CloneVolumeWithoutImageData(
                slicer.mrmlScene, inputVolume, slicer.mrmlScene.GenerateUniqueName(name)
            )
        elif outputVolume is not inputVolume:
            outputVolume.CopyOrientation(inputVolume)
            outputVolume.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        try:
            slicer.util.updateVolumeFromArray(outputVolume, array)
        except RuntimeError as error:
            if created:  # the clone and its display node go again
                for node in (outputVolume.GetDisplayNode(), outputVolume):
                    if node is not None:
                        slicer.mrmlScene.RemoveNode(node)
            raise ModuleError(f"Slicer could not take the result ({error}); nothing was changed") from None
        if outputVolume.GetDisplayNode() is None:  # a volume made by the selector's "Create new" has none
            outputVolume.CreateDefaultDisplayNodes()
        inputDisplay, display = inputVolume.GetDisplayNode(), outputVolume.GetDisplayNode()
        if inputDisplay is not None and outputVolume is not inputVolume:
            display.SetAndObserveColorNodeID(inputDisplay.GetColorNodeID())
            display.SetAutoWindowLevel(False)
            display.SetWindowLevel(inputDisplay.GetWindow(), inputDisplay.GetLevel())
        return outputVolume

    @staticmethod
    def _placeBesideInput(volume, inputVolume, what: str) -> None:
        """Put ``volume`` under the input's parent in the subject hierarchy (its DICOM study, or a folder) and give it
        the series attributes Slicer's DICOM export reads (``DICOM.Modality``, ``DICOM.FrameOfReferenceUID`` of the
        input: same scanner type, same geometry; ``DICOM.SeriesDescription`` "<original> <what>" and
        ``DICOM.SeriesNumber`` + 1000, as the command line's DICOM output). Its series UID is left unset, so the export
        makes a new series in the input's study."""
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        inputItem = shNode.GetItemByDataNode(inputVolume)
        item = shNode.GetItemByDataNode(volume)
        shNode.SetItemParent(item, shNode.GetItemParent(inputItem))
        prefix = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMAttributePrefix()
        for tag in ("Modality", "FrameOfReferenceUID"):
            if shNode.HasItemAttribute(inputItem, prefix + tag):
                shNode.SetItemAttribute(item, prefix + tag, shNode.GetItemAttribute(inputItem, prefix + tag))
        original = shNode.GetItemAttribute(inputItem, prefix + "SeriesDescription") or inputVolume.GetName()
        shNode.SetItemAttribute(item, prefix + "SeriesDescription", f"{original} {what}"[:64])  # DICOM LO: 64 chars
        number = shNode.GetItemAttribute(inputItem, prefix + "SeriesNumber").strip()
        if number.lstrip("-").isdigit():
            shNode.SetItemAttribute(item, prefix + "SeriesNumber", str(int(number) + SERIES_NUMBER_OFFSET))

    def _run(self, command, device, workdir, apply, waitForCompletion, onProgress, onFinished):
        """Start the worker; finish with ``apply(job)`` (which touches the scene) only when it succeeded. A background
        job is cancelled when the scene closes, and ``onFinished`` is called whatever happens."""
        env = dict(slicer.util.startupEnvironment())
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = "-1"  # the worker must not even initialise a GPU
        job = WorkerJob(command, env=env)
        logging.info("MedDenoise: %s", " ".join(command))

        def finish():
            try:
                job.check()
                return apply(job)
            finally:
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)

        def report(event: dict) -> None:
            if onProgress is not None:
                onProgress(job)

        if waitForCompletion:
            job.wait(report)
            return finish()

        timer = qt.QTimer()
        timer.setInterval(self.POLL_INTERVAL_MS)
        closeObserver = slicer.mrmlScene.AddObserver(slicer.mrmlScene.StartCloseEvent, lambda *args: job.cancel())

        def poll() -> None:
            if job.poll() and onProgress is not None:
                onProgress(job)
            if not job.finished:
                return
            timer.stop()
            slicer.mrmlScene.RemoveObserver(closeObserver)
            try:
                result, error = finish(), None
            except ModuleError as failure:
                result, error = None, failure
            except Exception as failure:  # a bug must still end the job: the panel would stay on "Cancel"
                logging.exception("MedDenoise: finishing the job failed")
                result, error = None, ModuleError(f"finishing the job failed ({failure!r}); please report")
            if onFinished is not None:
                onFinished(result, error)

        timer.timeout.connect(poll)
        timer.start()
        job.timer = timer  # the timer lives as long as the job
        return job


class MedDenoiseTest(ScriptedLoadableModuleTest):
    """Self-test inside Slicer: bad requests change nothing; with PyTorch and MONAI present, noise a sample volume,
    denoise it and check that PSNR against the original rises. Installs nothing (``--testing`` runs are unattended):
    without the packages the denoising half says so and is left out."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_errors_leave_scene_unchanged()
        self.setUp()
        self.test_denoise_raises_psnr()

    def _sample(self):
        import SampleData

        registerSampleData()
        volume = SampleData.downloadSample("MedDenoiseMRHead")
        # A slab of 12 central slices keeps the self-test short on a CPU.
        array = slicer.util.arrayFromVolume(volume)
        middle = array.shape[0] // 2
        slab = slicer.modules.volumes.logic().CloneVolumeWithoutImageData(slicer.mrmlScene, volume, "MRHeadSlab")
        slicer.util.updateVolumeFromArray(slab, array[middle - 6 : middle + 6].copy())
        return slab

    def test_denoise_raises_psnr(self):
        logic = MedDenoiseLogic()
        missing = logic.missingPackages()
        if missing:
            self.delayDisplay(f"Denoising left out: {', '.join(missing)} not installed (this test installs nothing)")
            return
        self.delayDisplay("Noising and denoising a sample volume")
        clean = self._sample()
        noisy = logic.addNoise(clean, DEFAULT_NOISE, seed=0).volume
        result = logic.process(noisy, referenceVolume=clean, device="cpu")
        self.assertEqual(result.volume.GetImageData().GetDimensions(), clean.GetImageData().GetDimensions())
        self.assertGreater(result.metrics["after"]["psnr"], result.metrics["before"]["psnr"])
        self.delayDisplay(f"Test passed: {result.metricsText()}")

    def test_errors_leave_scene_unchanged(self):
        logic = MedDenoiseLogic()
        sample = self._sample()
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
        nodes = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ModuleError):
            logic.process(labelmap)
        with self.assertRaises(ModuleError):
            logic.process(sample, model=MODULE_DIR / "no-such-bundle")
        with self.assertRaises(ModuleError):
            logic.process(sample, outputVolume=sample)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes)
