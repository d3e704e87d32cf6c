"""Shared fixtures: the bundle root on sys.path (its package is named ``scripts``, Model Zoo convention), the
repository root after it (for ``research``) and real images shipped inside pip packages."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.append(str(ROOT))  # the research package (research/), which builds on the bundle's


def research_contents() -> dict[bytes, str]:
    """Every file of ``research/`` (objectives, configs, experiment log) by content: what neither the zoo zip nor the
    Slicer extension may ship, found by content so that a copy under another name is caught too."""
    return {path.read_bytes(): path.relative_to(ROOT).as_posix() for path in (ROOT / "research").rglob("*.*")}


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the tools are runnable files, not package members)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ctrl_c_on() -> None:
    """``preexec_fn`` for a child that must take Ctrl-C: a shell's background job (``./test.sh &``, some CI runners)
    starts with SIGINT ignored, and Python then never installs its KeyboardInterrupt handler; a user's terminal
    always has it on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def shipped_model():
    """The shipped bundle's model on CPU, loaded once for the session (read-only: a test that changes it, or needs
    another precision or device, loads its own)."""
    from scripts.engine import load_bundle

    return load_bundle(BUNDLE, device="cpu")


@pytest.fixture(scope="session")
def embedded():
    """The embedded data list (real images inside pydicom-data, pydicom and nilearn)."""
    from scripts.data import embedded_datalist

    return embedded_datalist()


@pytest.fixture(scope="session")
def ct_slice(embedded) -> np.ndarray:
    """A real 512x512 CT slice (pydicom-data 693_UNCR, CQ500) scaled to [0, 1], float32 (H, W)."""
    from scripts.data import load_slices

    return load_slices([embedded["test"][0]], progress=False)[0]["label"][0]


def write_dicom_series(
    folder: Path, volume: np.ndarray, series_uid: str | None = None, spacing=(0.7, 0.7, 2.5)
) -> Path:
    """Write an int16 K x J x I volume as a real DICOM CT series (one file per slice), using pydicom's CT_small.dcm
    header as the template. Returns ``folder``."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = series_uid or generate_uid()
    for k, plane in enumerate(volume.astype(np.int16)):
        ds = template.copy()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[2])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = spacing[2]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.Rows, ds.Columns = plane.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = plane.tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture(scope="session")
def ct_volume_int16(embedded) -> np.ndarray:
    """A small real int16 CT volume in HU: 6 slices cut from the 512x512 CQ500 slice (rows shifted per slice)."""
    from scripts.image_io import read_image

    plane = read_image(embedded["test"][0]["image"]).array[0, 128:320, 128:352]  # 192 x 224 HU
    return np.stack([np.roll(plane, shift, axis=0) for shift in range(0, 12, 2)]).astype(np.int16)


@pytest.fixture(scope="session")
def dicom_series_dir(tmp_path_factory, ct_volume_int16) -> Path:
    """A DICOM CT series folder written from real CT pixels (plus one non-DICOM file that readers must skip)."""
    folder = write_dicom_series(tmp_path_factory.mktemp("series") / "ct_series", ct_volume_int16)
    (folder / "DIRFILE").write_text("not a DICOM file")
    return folder
