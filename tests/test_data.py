"""Data lists from real files: every supported format loads, DICOM series group, splits never share a volume."""

from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from scripts.data import (
    SPLITS,
    embedded_datalist,
    find_images,
    load_slices,
    make_datalist,
    noisy_pairs,
    split_by_group,
)
from scripts.errors import ImageReadError, InvalidImageError
from scripts.image_io import read_image
from scripts.intensity import IntensityWindow


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, embedded, dicom_series_dir, ct_volume_int16):
    """A folder tree holding every supported format, written from real pixels."""
    root = tmp_path_factory.mktemp("mixed")
    ct = ct_volume_int16
    shutil.copytree(dicom_series_dir, root / "ct" / "series")
    train = {item["image"].rsplit("/", 1)[-1]: item["image"] for item in embedded["training"]}
    shutil.copy(train["emri_small.dcm"], root / "mr_multiframe.dcm")  # multi-frame DICOM (10 frames)
    shutil.copy(train["RG1_UNCR.dcm"], root / "xray_single.dcm")
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((0.7, 0.7, 2.5))
    sitk.WriteImage(image, str(root / "ct" / "volume.nrrd"))
    sitk.WriteImage(image, str(root / "ct" / "volume.mha"))
    nib.save(nib.Nifti1Image(ct.transpose(2, 1, 0), np.diag([0.7, 0.7, 2.5, 1])), str(root / "ct" / "volume.nii.gz"))
    plane8 = (IntensityWindow.from_data(ct).forward(ct[0]) * 255).astype(np.uint8)
    (root / "xr").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(plane8), str(root / "xr" / "grey.png"))
    rgb = sitk.GetImageFromArray(np.repeat(plane8[..., None], 3, axis=-1), isVector=True)
    sitk.WriteImage(rgb, str(root / "xr" / "grey_as_rgb.png"))
    sitk.WriteImage(sitk.GetImageFromArray(plane8), str(root / "xr" / "photo.jpg"))
    sitk.WriteImage(sitk.GetImageFromArray(plane8), str(root / "xr" / "scan.tiff"))
    iio.imwrite(root / "xr" / "scan.pgm", plane8, extension=".pgm")
    (root / "xr" / "notes.txt").write_text("not an image")
    return root


def test_every_supported_format_is_found_and_loads(mixed_folder):
    items = find_images(mixed_folder)
    names = sorted(item["image"].rsplit("/", 1)[-1] for item in items)
    assert names == sorted(
        [
            "series",
            "mr_multiframe.dcm",
            "xray_single.dcm",
            "volume.nrrd",
            "volume.mha",
            "volume.nii.gz",
            "grey.png",
            "grey_as_rgb.png",
            "photo.jpg",
            "scan.tiff",
            "scan.pgm",
        ]
    ), "one item per file or series; non-DICOM and non-image files skipped"
    series = next(item for item in items if item["image"].endswith("series"))
    assert series["series_uid"] and series["modality"] == "CT"
    shapes = {
        item["image"].rsplit("/", 1)[-1]: read_image(item["image"], item.get("series_uid")).array.shape
        for item in items
    }
    assert shapes["series"] == shapes["volume.nrrd"] == shapes["volume.mha"] == (6, 192, 224)
    assert shapes["volume.nii.gz"] == (6, 192, 224)
    assert shapes["mr_multiframe.dcm"] == (10, 64, 64)
    assert shapes["grey_as_rgb.png"] == shapes["grey.png"] == (192, 224), "grey RGB becomes grey"
    assert {item["modality"] for item in items if "/xr/" in item["image"]} == {"XR"}


def test_dicom_series_keeps_hounsfield_units(dicom_series_dir, ct_volume_int16):
    volume = read_image(dicom_series_dir)
    np.testing.assert_array_equal(volume.array, ct_volume_int16)
    assert volume.spacing == pytest.approx((0.7, 0.7, 2.5)) and volume.modality == "CT"
    assert volume.array.min() < -500, "air stays around -1000 HU"


def test_colour_and_folder_errors_are_clear(tmp_path):
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0] = 255
    sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), str(tmp_path / "red.png"))
    with pytest.raises(InvalidImageError, match="colour"):
        read_image(tmp_path / "red.png")
    with pytest.raises(ImageReadError, match="no DICOM series"):
        read_image(tmp_path)
    with pytest.raises(ImageReadError, match="not a folder"):
        find_images(tmp_path / "missing")


def test_split_is_by_group_and_reproducible(tmp_path):
    items = [
        {"image": f"{source}/p{p}_img{i}.png", "group": f"{source}-p{p}", "source": source, "modality": "XR"}
        for source in ("a", "b")
        for p in range(10)
        for i in range(3)
    ]
    items.append({"image": "c/only.nii", "group": "c-only", "source": "c", "modality": "MR"})
    datalist = split_by_group(items, seed=7)
    groups = {split: {item["group"] for item in datalist[split]} for split in datalist}
    assert not groups["training"] & groups["validation"]
    assert not groups["training"] & groups["test"]
    assert not groups["validation"] & groups["test"]
    assert sum(len(v) for v in datalist.values()) == len(items)
    for source in ("a", "b"):  # each source is split on its own, so every split sees every source
        assert all(any(item["source"] == source for item in datalist[split]) for split in datalist)
    assert [item["image"] for item in datalist["training"] if item["source"] == "c"] == ["c/only.nii"]
    assert split_by_group(items, seed=7) == datalist
    assert split_by_group(items, seed=8) != datalist


def test_patient_ids_from_metadata_csv_keep_a_patient_in_one_split(tmp_path):
    plane = (np.random.default_rng(0).random((16, 16)) * 255).astype(np.uint8)
    rows = ["patient_id,image_id"]
    for patient in range(6):
        for image in range(3):
            name = f"img{patient}{image}"
            sitk.WriteImage(sitk.GetImageFromArray(plane), str(tmp_path / f"{name}.png"))
            rows.append(f"pat{patient},{name}")
    (tmp_path / "metadata.csv").write_text("\n".join(rows))
    datalist = make_datalist(tmp_path, tmp_path / "out" / "datalist.json", seed=0)
    patients = {split: {item["group"] for item in datalist[split]} for split in datalist}
    assert set().union(*patients.values()) == {f"pat{p}" for p in range(6)}
    assert sum(len(v) for v in patients.values()) == 6, "each patient in exactly one split"
    assert json.loads((tmp_path / "out" / "datalist.json").read_text()) == datalist


def test_slices_of_one_volume_never_cross_splits(mixed_folder):
    datalist = make_datalist(mixed_folder, fractions=(0.5, 0.25, 0.25), seed=1)
    where = {}
    for split, items in datalist.items():
        for s in load_slices(items, progress=False):
            where.setdefault(s["image_path"], set()).add(split)
    assert where and all(len(splits) == 1 for splits in where.values())


def test_embedded_data_set_is_real_and_split_by_image():
    datalist = embedded_datalist()
    images = {split: {item["image"] for item in items} for split, items in datalist.items()}
    assert not images["training"] & images["test"] and not images["validation"] & images["test"]
    assert {item["modality"] for item in datalist["test"]} == {"CT", "MR", "XR"}
    assert {item["modality"] for item in datalist["training"]} == {"CT", "MR", "XR"}


def test_slices_are_scaled_to_unit_range_and_blank_ones_dropped(embedded):
    mni = [item for item in embedded["training"] if "mni" in item["image"].lower()]
    slices = load_slices(mni, max_slices_per_volume=12, progress=False)
    assert 0 < len(slices) <= 12
    for s in slices:
        assert s["label"].dtype == np.float32 and s["label"].shape[0] == 1
        assert s["label"].min() >= 0 and s["label"].max() <= 1 and s["label"].std() >= 0.01
    every = load_slices(mni, progress=False)
    assert len(every) < 189, "empty background slices of the MNI template are dropped"


def test_noisy_pairs_are_fixed_by_the_seed(ct_slice):
    slices = [{"label": ct_slice[None], "image_path": "ct", "group": "g", "source": "s", "modality": "CT"}]
    first = noisy_pairs(slices, "gaussian:factor=0.1", seed=3, crop=64)
    again = noisy_pairs(slices, "gaussian:factor=0.1", seed=3, crop=64)
    assert first[0]["image"].shape == (1, 64, 64)
    np.testing.assert_array_equal(first[0]["image"], again[0]["image"])
    assert not np.array_equal(first[0]["image"], first[0]["label"])


def _write_png_sources(root, sources, plane8, images_per_source=4):
    """One PNG per patient in each source folder under ``root`` (the shared data set's layout), real CT pixels."""
    for source in sources:
        (root / source).mkdir(parents=True, exist_ok=True)
        for patient in range(images_per_source):
            sitk.WriteImage(
                sitk.GetImageFromArray(np.roll(plane8, 7 * patient, axis=1)), str(root / source / f"p{patient}.png")
            )


def test_leave_source_out_split_never_shares_a_source_with_training(tmp_path, ct_slice):
    from scripts.data import LEAVE_SOURCE_OUT, LEAVE_SOURCE_OUT_VALIDATION, REDISTRIBUTABLE_SOURCES, under

    plane8 = (ct_slice[::8, ::8] * 255).astype(np.uint8)
    seen = ["ct/sbu_covid_ct_slices/patient1/axial", "mr/prisma_t1_sag_brain", "xray/chest_xray_hannover"]
    _write_png_sources(tmp_path, [*LEAVE_SOURCE_OUT, *LEAVE_SOURCE_OUT_VALIDATION, *seen, "ct/covid_ct_slices"], plane8)

    by_group = make_datalist(tmp_path, seed=0)
    datalist = make_datalist(tmp_path, seed=0, split="leave-source-out", train_sources=REDISTRIBUTABLE_SOURCES)
    sources = {split: {item["source"] for item in items} for split, items in datalist.items() if split in SPLITS}
    assert sources["test"] == set(LEAVE_SOURCE_OUT), "every held-out source is tested, nothing else"
    assert not sources["training"] & sources["test"] and not sources["validation"] & sources["test"]
    assert not any(under(source, LEAVE_SOURCE_OUT) for source in sources["training"] | sources["validation"])
    assert set(LEAVE_SOURCE_OUT_VALIDATION) <= sources["validation"]
    assert not any(under(source, LEAVE_SOURCE_OUT_VALIDATION) for source in sources["training"])
    assert sources["training"] == set(seen), "held-out and unlicensed sources are never trained on"
    assert "ct/covid_ct_slices" in datalist["left_out_sources"]
    trained = {item["image"] for item in datalist["training"]}
    assert not trained & {item["image"] for item in by_group["test"]}, "the by-group test split stays untrained too"
    assert {item["modality"] for item in datalist["test"]} == {"CT", "MR", "XR"}

    _write_png_sources(tmp_path / "other", seen, plane8)
    with pytest.raises(ImageReadError, match="leave-source-out sources"):
        make_datalist(tmp_path / "other", split="leave-source-out")


def test_clean_target_filter_leaves_out_a_noisy_target_and_keeps_a_clean_one(tmp_path, ct_volume_int16):
    from scripts.data import MAX_TARGET_SIGMA, clean_targets

    clean = ct_volume_int16[:4]
    window = IntensityWindow.from_data(clean)
    noise = np.random.default_rng(0).normal(0.0, 0.04 * window.width, clean.shape)  # 0.04 of the window
    for name, volume in (("clean", clean), ("noisy", clean + noise)):
        sitk.WriteImage(sitk.GetImageFromArray(volume.astype(np.float32)), str(tmp_path / f"{name}.nrrd"))
    items = [
        {"image": str(tmp_path / f"{name}.nrrd"), "group": name, "source": "s", "modality": "CT"}
        for name in ("clean", "noisy")
    ]
    filtered = clean_targets({"training": items, "validation": [], "test": list(items)}, progress=False)
    assert [item["group"] for item in filtered["training"]] == ["clean"]
    assert [item["group"] for item in filtered["left_out_noisy"]] == ["noisy"]
    assert filtered["training"][0]["noise_sigma"] <= MAX_TARGET_SIGMA < filtered["left_out_noisy"][0]["noise_sigma"]
    assert filtered["test"] == items, "test splits are never filtered"


def test_clean_targets_average_a_noisy_training_target_down_instead_of_leaving_it_out(tmp_path, ct_volume_int16):
    """Pre-cleaning: white noise at 0.025 of the window measures under MAX_TARGET_SIGMA once 2 x 2 pixels are averaged,
    so that training target is kept at half size; at 0.08 even 3 x 3 means stay too noisy; validation is never
    averaged down (its scores stay comparable between runs)."""
    from scripts.data import MAX_TARGET_SIGMA, clean_targets, load_slices

    clean = ct_volume_int16[:2].astype(np.float32)
    width = IntensityWindow.from_data(clean).width
    rng = np.random.default_rng(0)
    items = []
    for name, level in (("light", 0.025), ("heavy", 0.08)):
        noisy = clean + rng.normal(0.0, level * width, clean.shape)
        sitk.WriteImage(sitk.GetImageFromArray(noisy.astype(np.float32)), str(tmp_path / f"{name}.nrrd"))
        items.append({"image": str(tmp_path / f"{name}.nrrd"), "group": name, "source": "s", "modality": "CT"})
    kept_full = clean_targets({"training": list(items), "validation": [items[0]]}, max_downsample=1, progress=False)
    assert kept_full["training"] == [], "without averaging down both noisy targets are left out"

    cleaned = clean_targets({"training": list(items), "validation": [items[0]]}, max_downsample=3, progress=False)
    (light,) = cleaned["training"]
    assert light["group"] == "light" and light["downsample"] == 2
    assert light["noise_sigma"] <= MAX_TARGET_SIGMA < light["noise_sigma_full"]
    assert cleaned["validation"] == [], "validation items are kept or left out, never averaged down"
    assert sorted(item["group"] for item in cleaned["left_out_noisy"]) == ["heavy", "light"]
    (first, *_) = load_slices([light], progress=False)
    assert first["label"].shape[1:] == tuple(side // 2 for side in clean.shape[1:])


def test_a_series_refused_as_a_volume_still_gives_its_slices(tmp_path, ct_volume_int16):
    import pydicom
    from conftest import write_dicom_series

    from scripts.data import read_planes

    folder = write_dicom_series(tmp_path / "gap", ct_volume_int16)
    last = sorted(folder.glob("*.dcm"))[-1]
    ds = pydicom.dcmread(last)
    ds.ImagePositionPatient = [0.0, 0.0, 40.0]  # a gap: the volume's spacing would change
    ds.save_as(last)
    (item,) = find_images(tmp_path)
    with pytest.raises(ImageReadError, match="not evenly spaced"):
        read_image(item["image"], item["series_uid"])
    planes = read_planes(item)
    np.testing.assert_array_equal(planes, ct_volume_int16)  # every slice, as stored, in position order
    assert len(load_slices([item], progress=False)) == len(ct_volume_int16)
