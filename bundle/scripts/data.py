"""Data lists and 2D training slices from real medical images.

A data list is MONAI's decathlon-style dict ``{"training": [...], "validation": [...], "test": [...]}``; each item is
``{"image": path, "group": patient-or-volume id, "source": folder, "modality": CT|MR|XR|...}`` and, for a DICOM series,
``"series_uid"``. Splits are made **by group** (patient where the data says so, else volume/series), never by slice.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from tqdm import tqdm

from .atomic import write_atomic
from .errors import ImageReadError, InvalidImageError
from .image_io import READ_EXTENSIONS, dicom_series, extension, read_image, stem
from .intensity import IntensityWindow
from .noise import parse_noise
from .slices import evenly_spaced, slice_stack

SPLITS = ("training", "validation", "test")
#: The named ways :func:`make_datalist` splits a folder (``by-group``: every source split by patient/series).
SPLIT_NAMES = ("by-group", "leave-source-out")

#: Source folders of the shared data set (paths relative to its root, ``../shared/data``) held out whole: the
#: leave-source-out test split, scanners and sites no model here is trained on. Chosen by scanner and site so that
#: each modality's test is a vendor, body part or kind of image training never shows:
LEAVE_SOURCE_OUT = (
    "ct/fodicom_ct_samples",  # GE HiSpeed CT/i chest, GE Optima CT520 spine, Philips Ingenuity head in a wide window
    "ct/dcmqi_liver_ct_slices",  # GE LightSpeed Ultra liver (RSNA/TCIA)
    "mr/tcia_pelvis_haste",  # Siemens MAGNETOM Vision 1.5 T pelvis HASTE (TCIA)
    "mr/fodicom_mr_samples",  # GE Genesis Signa and Philips Achieva brain, a knee
    "xray/fodicom_xray_samples",  # GE, Siemens and Hologic mammograms, dental panoramic, Fuji chest CR, a topogram
    "xray/nih_cxr14_png",  # NIH Clinical Center chest PA (ChestX-ray14)
)
#: Source folders held out whole as the leave-source-out *validation* split, so that choosing a checkpoint also
#: rewards a scanner training never saw (Philips Brilliance chest CT, Siemens TrioTim T2 brain MR; X-ray validates on
#: held-out Hannover patients).
LEAVE_SOURCE_OUT_VALIDATION = ("ct/lidc_chest_ct_series", "mr/trio_t2_fse_brain")
#: The nearly flat CT slice of the flat-region check: brain in a head CT whose window spans air to bone (-998 to
#: 1257 HU), so the brain is a near-uniform grey (std 0.006 of the window in its central 128x128).
FLAT_REGION_CHECK = "ct/fodicom_ct_samples/IM-0001-0001-0001.dcm"
#: Source folders whose licences allow redistributing weights trained on them (the rule and the terms:
#: ``docs/data_license.txt``): MIT, BSD, Apache-2.0 or CC BY, nothing stated that restricts the images further.
REDISTRIBUTABLE_SOURCES = (
    "ct/head_phantom_series",
    "ct/tooth_microct",
    "ct/sbu_covid_ct_slices",
    "ct/lidc_chest_ct_series",
    "ct/totalseg_body_ct_series",
    "mr/thorax_mr_series",
    "mr/prisma_t1_sag_brain",
    "mr/trio_t2_fse_brain",
    "mr/pyradiomics_brain_nrrd",
    "xray/chest_xray_hannover",
)
#: Largest noise sigma (on the [0, 1] scale :func:`load_slices` uses) a clean training target may carry: a fifth of
#: the lightest benchmark noise (0.07), so the noise a target keeps is at most 1/25 of the noise the network learns to
#: remove. Measured with :func:`scripts.noise_level.estimate_noise_level`: every redistributable 12/16-bit source is
#: below 0.013; 27 of the 150 contrast-enhanced 8-bit Hannover radiographs are (median 0.022).
MAX_TARGET_SIGMA = 0.015
#: Largest in-plane factor by which :func:`clean_targets` may average a noisy training target down (k x k means) to
#: bring its noise under :data:`MAX_TARGET_SIGMA` instead of leaving it out. Averaging k x k pixels divides white noise
#: by k; the Hannover radiographs' (JPEG, partly correlated) by 1.4-1.9 at k = 2 (median 0.022 -> 0.013), and their
#: 524 x 640 pixels stay larger than a 128 x 128 training patch at k = 3. Leaving them out dropped 115 of the 140
#: redistributable radiographs: X-ray was 25 of 75 training images.
MAX_TARGET_DOWNSAMPLE = 3
_MODALITY_WORDS = {"ct": "CT", "mr": "MR", "mri": "MR", "xr": "XR", "xray": "XR", "cr": "XR", "dx": "XR"}
_DICOM_XRAY = {"CR", "DX", "RG", "MG", "RF", "XA", "IO", "PX"}


def normalise_modality(modality: str, path: str | os.PathLike = "") -> str:
    """``CT``, ``MR`` or ``XR`` (radiography) from a DICOM Modality, else from words in the path; ``""`` if unknown."""
    modality = modality.upper().strip()
    if modality in ("CT", "MR"):
        return modality
    if modality in _DICOM_XRAY:
        return "XR"
    for part in reversed(Path(path).parts):
        for word in part.lower().replace("_", " ").replace("-", " ").split():
            if word in _MODALITY_WORDS:
                return _MODALITY_WORDS[word]
    return modality


def _patients_from_csv(folder: Path) -> dict[str, str]:
    """``{image file stem: patient id}`` from a ``metadata.csv`` with ``patient_id`` and ``image_id`` columns."""
    table = folder / "metadata.csv"
    if not table.is_file():
        return {}
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"patient_id", "image_id"} <= set(rows[0]):
        return {}
    return {row["image_id"]: row["patient_id"] for row in rows}


def find_images(root: str | os.PathLike) -> list[dict]:
    """Every readable image under ``root`` (recursively), one item per file or DICOM series.

    DICOM files are grouped into series by SeriesInstanceUID (single- and multi-frame files that are a series of their
    own stay one item); files that are neither DICOM nor a supported image are skipped. A modality word in the folders
    below ``root`` (``ct/``, ``mr/``, ``xray/``) names the modality before a DICOM header does.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImageReadError(f"{root}: not a folder; give a folder of images (searched recursively)")
    items = []
    for folder, _, files in sorted(os.walk(root)):
        folder = Path(folder)
        patients = _patients_from_csv(folder)
        source = str(folder.relative_to(root))
        in_series: set[str] = set()
        for uid, series_files in dicom_series(folder).items():
            in_series.update(os.path.basename(f) for f in series_files)
            header = pydicom.dcmread(
                series_files[0], stop_before_pixels=True, force=True
            )  # ACR-NEMA files lack a preamble
            item = {
                "image": str(folder),
                "series_uid": uid,
                "group": str(header.get("PatientID", "") or uid),
                "source": source,
                # folder names under the root win over the header, which can be wrong (a Hologic mammogram and a
                # CT topogram of the shared data say CT)
                "modality": normalise_modality("", source)
                or normalise_modality(str(header.get("Modality", "")), folder),
            }
            items.append(item if len(series_files) > 1 else {**item, "image": series_files[0], "series_uid": None})
        for name in sorted(files):
            path = folder / name
            if name in in_series or extension(name) not in READ_EXTENSIONS or extension(name) == ".dcm":
                continue
            items.append(
                {
                    "image": str(path),
                    "group": patients.get(stem(name), str(path.relative_to(root))),
                    "source": source,
                    "modality": normalise_modality("", path),
                }
            )
    for item in items:
        if item.get("series_uid") is None:
            item.pop("series_uid", None)
    return items


def split_by_group(
    items: Sequence[dict], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[dict]]:
    """Split items into training/validation/test by ``group``, separately within each ``source`` folder.

    All items of one group land in one split. A source with fewer than three groups goes to training whole.
    """
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError("fractions must be three non-negative numbers (training, validation, test) adding up to 1")
    rng = np.random.default_rng(seed)
    by_source: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        by_source[item["source"]][item["group"]].append(item)
    datalist: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for source in sorted(by_source):
        groups = sorted(by_source[source])
        rng.shuffle(groups)
        n_val = n_test = 0
        if len(groups) >= 3:
            n_val = max(1, round(fractions[1] * len(groups))) if fractions[1] else 0
            n_test = max(1, round(fractions[2] * len(groups))) if fractions[2] else 0
        for index, group in enumerate(groups):
            split = "validation" if index < n_val else "test" if index < n_val + n_test else "training"
            datalist[split].extend(by_source[source][group])
    return datalist


def embedded_datalist() -> dict[str, list[dict]]:
    """Real images shipped inside pip packages, with a fixed split by source image (nothing is downloaded).

    pydicom-data: CT 512x512 (CQ500), MR 1024x1024, chest and extremity radiographs, a 2-frame CT, a 10-frame MR;
    pydicom's test files: a CT and an MR slice; nilearn: the MNI152 T1 template (197x233x189). The test split holds one
    image of each modality (CT, MR, X-ray) that training never sees.
    """
    import data_store  # pydicom-data's package
    from pydicom.data import get_testdata_file

    store = Path(data_store.__file__).parent / "data"
    mni = _embedded_mni_path()

    def item(path: Path | str, modality: str) -> dict:
        return {"image": str(path), "group": Path(path).name, "source": "embedded", "modality": modality}

    return {
        "training": [
            item(mni, "MR"),
            item(store / "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR"),
            item(store / "emri_small.dcm", "MR"),
            item(store / "eCT_Supplemental.dcm", "CT"),
            item(store / "RG1_UNCR.dcm", "XR"),
        ],
        "validation": [item(get_testdata_file("CT_small.dcm"), "CT"), item(get_testdata_file("MR_small.dcm"), "MR")],
        "test": [
            item(store / "693_UNCR.dcm", "CT"),
            item(store / "MR2_UNCR.dcm", "MR"),
            item(store / "RG3_UNCR.dcm", "XR"),
        ],
    }


def _embedded_mni_path() -> Path:
    """The MNI152 T1 template file that nilearn ships inside its package (never a download)."""
    import nilearn

    candidates = sorted(Path(nilearn.__file__).parent.glob("datasets/data/mni_icbm152_t1_tal_nlin_sym_09a*.nii*"))
    if not candidates:
        raise ImageReadError("nilearn's shipped MNI152 T1 template is missing; reinstall nilearn (see README)")
    return candidates[0]


def make_datalist(
    dataset_dir: str | os.PathLike | None,
    output_file: str | os.PathLike | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    include_embedded: bool = False,
    split: str = "by-group",
    train_sources: Sequence[str] | None = None,
    max_target_sigma: float | None = None,
    max_target_downsample: int = 1,
) -> dict[str, list[dict]]:
    """The data list of ``dataset_dir``, or of the embedded data when it is empty/None/``embedded``.

    Args:
        split: ``by-group`` (every source split by patient/series, :func:`split_by_group`) or ``leave-source-out``
            (:func:`hold_out_sources` with :data:`LEAVE_SOURCE_OUT` as test and :data:`LEAVE_SOURCE_OUT_VALIDATION`
            as validation; ``dataset_dir`` must be the shared data set's root).
        include_embedded: adds the embedded data's fixed splits to the folder's (training to training, test to the
            by-group test), so one model can train on both while neither test split is ever trained on.
        train_sources: only these source folders (and the embedded images) are trained and validated on
            (:func:`keep_sources`), e.g. :data:`REDISTRIBUTABLE_SOURCES`.
        max_target_sigma: leave out training and validation images noisier than this (:func:`clean_targets`).
        max_target_downsample: average a noisy training image down by up to this factor instead, where that brings
            its noise under ``max_target_sigma`` (:func:`clean_targets`; 1 = never).
        output_file: (optional) receives the list as JSON.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"split must be one of {', '.join(SPLIT_NAMES)}, not {split!r}")
    if not dataset_dir or str(dataset_dir) == "embedded":
        if split != "by-group":
            raise ImageReadError("the leave-source-out split needs the shared data set's folder, not the embedded data")
        datalist = embedded_datalist()
    else:
        items = find_images(dataset_dir)
        if not items:
            raise ImageReadError(f"{dataset_dir}: no readable images found (searched recursively)")
        datalist = split_by_group(items, fractions, seed)
        if split == "leave-source-out":
            datalist = hold_out_sources(datalist, LEAVE_SOURCE_OUT, LEAVE_SOURCE_OUT_VALIDATION)
        if include_embedded:
            embedded = embedded_datalist()
            seen_test = "test" if split == "by-group" else "test_seen_sources"
            datalist["training"] += embedded["training"]
            datalist["validation"] += embedded["validation"]
            datalist[seen_test] += embedded["test"]
    if train_sources is not None:
        datalist = keep_sources(datalist, train_sources)
    if max_target_sigma:
        datalist = clean_targets(datalist, max_target_sigma, max_target_downsample)
    if output_file:
        write_atomic(output_file, lambda path: path.write_text(json.dumps(datalist, indent=1)))
    return datalist


def read_planes(item: dict) -> np.ndarray:
    """An item's pixels as a K x H x W stack (K >= 1), in native units, for training and benchmarks; averaged down
    in-plane by ``item["downsample"]`` (k x k means, edges cut to a multiple of k) where :func:`clean_targets` set it.

    Only the 2D slices matter here, so a DICOM series that :func:`scripts.image_io.read_image` refuses as a volume
    (uneven spacing, a gap, a tilted gantry: its geometry would change) is read file by file, each slice as it is
    stored (the shared data's head phantom, LIDC chest CT and TrioTim brain MR series).

    Raises:
        ImageReadError, InvalidImageError: as :func:`scripts.image_io.read_image`, when the files cannot be read
            one by one either.
    """
    try:
        array = read_image(item["image"], item.get("series_uid")).array
    except ImageReadError:
        files = dicom_series(item["image"]).get(item["series_uid"], []) if item.get("series_uid") else []
        if len(files) < 2:
            raise
        planes = [read_image(path).array for path in files]
        planes = [slice_stack(plane) for plane in planes]
        if len({plane.shape[1:] for plane in planes}) != 1:
            raise
        array = np.concatenate(planes)
    array = slice_stack(array)
    factor = int(item.get("downsample", 1))
    if factor > 1:
        height, width = (side // factor for side in array.shape[1:])
        blocks = array[:, : height * factor, : width * factor].astype(np.float32)
        array = blocks.reshape(len(array), height, factor, width, factor).mean(axis=(2, 4))
    return array


def under(source: str, folders: Iterable[str]) -> bool:
    """Whether ``source`` (a folder relative to the data root, e.g. ``ct/sbu_covid_ct_slices/p1/axial``) is one of
    ``folders`` or lies inside one of them."""
    return any(source == folder or source.startswith(folder.rstrip("/") + "/") for folder in folders)


def hold_out_sources(
    datalist: dict[str, list[dict]], test_sources: Sequence[str], validation_sources: Sequence[str] = ()
) -> dict[str, list[dict]]:
    """The leave-source-out split of a by-group data list: every item of ``test_sources`` (from whichever split)
    goes to ``test``, every item of ``validation_sources`` to ``validation``, and nothing of either stays in training.

    The other sources keep their training items and their by-group validation items; their by-group test items move
    to ``test_seen_sources``, so they stay untrained and the by-group table of a model trained on this list keeps its
    meaning.

    Raises:
        ImageReadError: none of ``test_sources`` is in the data (the folder is not the shared data set's root).
    """
    items = [item for split in datalist.values() for item in split]
    split = {
        "training": [],
        "validation": [i for i in items if under(i["source"], validation_sources)],
        "test": [i for i in items if under(i["source"], test_sources)],
        "test_seen_sources": [],
    }
    if not split["test"]:
        raise ImageReadError(
            f"none of the leave-source-out sources ({', '.join(test_sources)}) is in the data; give the shared data "
            "set's root folder (its ct/, mr/ and xray/ folders), or use the by-group split"
        )
    for name, target in (("training", "training"), ("validation", "validation"), ("test", "test_seen_sources")):
        split[target] += [
            i
            for i in datalist.get(name, [])
            if not under(i["source"], test_sources) and not under(i["source"], validation_sources)
        ]
    return split


def keep_sources(datalist: dict[str, list[dict]], sources: Sequence[str]) -> dict[str, list[dict]]:
    """The data list with ``training`` and ``validation`` reduced to items of ``sources`` (and embedded images);
    test splits are kept whole. Sources that are left out are listed under ``left_out_sources``."""
    kept = {name: list(items) for name, items in datalist.items()}
    left_out = set()
    for name in ("training", "validation"):
        kept[name] = [i for i in datalist.get(name, []) if i["source"] == "embedded" or under(i["source"], sources)]
        left_out |= {i["source"] for i in datalist.get(name, []) if i not in kept[name]}
    kept["left_out_sources"] = sorted(left_out)
    return kept


def measure_target_noise(items: Iterable[dict], progress: bool = True) -> list[dict]:
    """Each item with ``noise_sigma``: its noise standard deviation on the [0, 1] scale :func:`load_slices` gives it
    (:func:`scripts.noise_level.estimate_noise_level`, the median over up to 16 slices); unreadable items are left
    out with a message, as :func:`load_slices` leaves them out."""
    from .noise_level import estimate_noise_level

    measured = []
    for item in tqdm(list(items), desc="measuring target noise", unit="image", disable=not progress):
        try:
            sigma = estimate_noise_level(read_planes(item)).sigma_scaled
        except (ImageReadError, InvalidImageError) as error:
            tqdm.write(f"skipping {error}")
            continue
        measured.append({**item, "noise_sigma": round(float(sigma), 5)})
    return measured


def clean_targets(
    datalist: dict[str, list[dict]], max_sigma: float = MAX_TARGET_SIGMA, max_downsample: int = 1, progress: bool = True
) -> dict[str, list[dict]]:
    """The data list with every ``training`` and ``validation`` item's noise measured (:func:`measure_target_noise`)
    and the ones noisier than ``max_sigma`` pre-cleaned or moved to ``left_out_noisy``: a network trained to return
    its targets keeps whatever noise they carry (``xray/chest_xray_hannover``: median 0.022, a third of the lightest
    benchmark noise).

    Pre-cleaning (training items only, ``max_downsample`` > 1): a noisy item gets the smallest ``downsample`` factor
    k <= ``max_downsample`` whose k x k means (:func:`read_planes`) measure at most ``max_sigma``, and ``noise_sigma``
    becomes that measurement (``noise_sigma_full``: the one before). Validation items are only kept or left out, so
    validation scores stay comparable between runs. Test splits are not filtered.
    """
    if not max_sigma > 0:
        raise ValueError(f"max_sigma must be a positive noise level on the [0, 1] scale, not {max_sigma}")
    if max_downsample < 1:
        raise ValueError(f"max_downsample must be at least 1 (1 = never average down), not {max_downsample}")
    cleaned = dict(datalist)
    cleaned["left_out_noisy"] = list(datalist.get("left_out_noisy", []))
    for name in ("training", "validation"):
        measured = measure_target_noise(datalist.get(name, []), progress)
        if name == "training":
            measured = [_averaged_down(item, max_sigma, max_downsample) for item in measured]
        cleaned[name] = [i for i in measured if i["noise_sigma"] <= max_sigma]
        cleaned["left_out_noisy"] += [i for i in measured if i["noise_sigma"] > max_sigma]
    return cleaned


def _averaged_down(item: dict, max_sigma: float, max_downsample: int) -> dict:
    """``item`` with the smallest ``downsample`` factor that brings its noise under ``max_sigma``, if any."""
    if item["noise_sigma"] <= max_sigma:
        return item
    for factor in range(2, max_downsample + 1):
        (averaged,) = measure_target_noise([{**item, "downsample": factor}], progress=False)
        if averaged["noise_sigma"] <= max_sigma:
            return {**averaged, "noise_sigma_full": item["noise_sigma"]}
    return item


def load_slices(
    items: Iterable[dict], max_slices_per_volume: int | None = None, min_std: float = 0.01, progress: bool = True
) -> list[dict]:
    """Load each item, scale it to [0, 1] with its :meth:`IntensityWindow.from_data` window and cut it into 2D slices
    along the acquisition axis (axis 0).

    Returns dicts ``{"label": float32 (1, H, W) in [0, 1], "group", "source", "modality", "image_path", "slice"}``.
    Slices whose standard deviation is below ``min_std`` (empty background) are dropped; ``max_slices_per_volume``
    keeps that many evenly spaced slices of a large volume so it does not swamp single images.
    """
    items = list(items)
    slices = []
    for item in tqdm(items, desc="loading images", unit="image", disable=not progress):
        try:
            array = read_planes(item)
        except (ImageReadError, InvalidImageError) as error:
            tqdm.write(f"skipping {error}")
            continue
        window = IntensityWindow.from_data(array)
        for index in evenly_spaced(len(array), max_slices_per_volume):
            scaled = window.forward(array[index])
            if scaled.std() < min_std:
                continue
            slices.append(
                {
                    "label": scaled[None],
                    "group": item.get("group", ""),
                    "source": item.get("source", ""),
                    "modality": item.get("modality", ""),
                    "image_path": str(item["image"]),
                    "slice": int(index),
                }
            )
    if not slices:
        raise ImageReadError("no usable slices: every image was unreadable or blank")
    return slices


def center_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` x ``size`` window of a (..., H, W) array (unchanged where it is already smaller)."""
    if not size:
        return image
    height, width = image.shape[-2:]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return image[..., top : top + size, left : left + size]


def noisy_pairs(slices: Sequence[dict], noise: str, seed: int = 0, crop: int | None = None) -> list[dict]:
    """Fixed noisy/clean pairs for validation and evaluation: ``{"image": noisy, "label": clean, ...}``.

    The noise is drawn once from ``seed``, so every epoch and every run sees the same pairs. ``crop`` takes the central
    window of each slice (large radiographs would otherwise dominate time).
    """
    model = parse_noise(noise)
    model.set_random_state(seed=seed)
    pairs = []
    for item in slices:
        clean = np.ascontiguousarray(center_crop(item["label"], crop))
        pairs.append({**item, "label": clean, "image": model(clean), "noise": model.spec})
    return pairs
