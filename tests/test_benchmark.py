"""scripts/benchmark.py end to end on the embedded test images: outputs, schema and seeded reproducibility."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from scripts.errors import MedDenoiseError, NoiseSpecError
from scripts.report import dae_versus_median, summarize

SETTINGS = ["gaussian:factor=0.1,mean=0,std=1", "photon:peak=200"]
METHODS = "noisy,median,average,dae"
TINY = ["--data", "embedded", "--noise", *SETTINGS, "--methods", METHODS, "--max-slices", "1", "--crop", "64"]
ROW_KEYS = {"noise", "method", "n", "psnr", "ssim", "mse", "psnr_std", "ssim_std", "seconds_per_slice"}


@pytest.fixture(scope="module")
def benchmark():
    """scripts/benchmark.py as a module (it is a runnable file, not a package member)."""
    spec = importlib.util.spec_from_file_location("benchmark", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_run(benchmark, tmp_path_factory):
    """One command-line run on the tiny setting (in this process: importing torch again would double the time):
    (output folder, its results.json)."""
    out = tmp_path_factory.mktemp("cli")
    assert benchmark.main([*TINY, "--seed", "3", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _scores(results: dict) -> list[tuple]:
    """Every slice's scores (not its timing, which varies from run to run)."""
    return [(r["noise"], r["method"], r["image"], r["psnr"], r["ssim"], r["mse"]) for r in results["per_slice"]]


def test_cli_writes_results_json_markdown_and_figures(cli_run):
    out, results = cli_run
    assert len(results["rows"]) == len(SETTINGS) * len(METHODS.split(","))
    for row in results["rows"]:
        assert set(row) >= ROW_KEYS
        assert row["n"] == 3  # the embedded test split: one CT, one MR, one X-ray slice
        assert row["seconds_per_slice"] >= 0 and 0 <= row["ssim"] <= 1 and row["mse"] >= 0
    assert set(results["per_modality"]) == {"CT", "MR", "XR"}
    assert all(row["n"] == 1 for rows in results["per_modality"].values() for row in rows)
    mean_errors = [r["mean_error"] for r in results["per_slice"]]
    assert all(e**2 <= r["mse"] * (1 + 1e-6) for e, r in zip(mean_errors, results["per_slice"], strict=True))
    assert any(mean_errors), "a squared mean error is part of every MSE, and clipped noise has some"
    signed = {(r["noise"], r["image"], r["method"]): r["mean_error"] for r in results["per_slice"]}
    for noise, image, method in signed:
        if method == "average":  # a 3x3 mean with reflected edges keeps the slice's mean: its error is the noise's
            assert abs(signed[noise, image, "average"] - signed[noise, image, "noisy"]) < 1e-4
    assert results["data"]["slices"] == 3 and results["data"]["seed"] == 3 and results["data"]["crop"] == 64
    assert results["bundle_version"] and results["machine"]["cpus"] >= 1
    markdown = (out / "results.md").read_text()
    for title in ("## PSNR (dB)", "## SSIM", "## MSE", "## CT: SSIM", "## DAE vs median filter"):
        assert title in markdown
    assert f"Machine: {results['machine']['platform']}, " in markdown
    assert markdown.count("**") >= 2 * 3 * len(SETTINGS)  # one bold best per row in each metric table
    assert (out / "psnr_vs_noise.png").stat().st_size > 10_000
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert len(figures) == 3 * len(SETTINGS) and figures[0].startswith("CT_0_gaussian")


def test_denoisers_beat_the_noisy_input_in_the_table(cli_run):
    _, results = cli_run
    psnr = {(r["noise"], r["method"]): r["psnr"] for r in results["rows"]}
    for noise in SETTINGS:
        assert psnr[noise, "median"] > psnr[noise, "noisy"] + 3
        assert psnr[noise, "average"] > psnr[noise, "noisy"] + 3


def test_same_seed_same_numbers_other_seed_other_numbers(benchmark, cli_run, tmp_path):
    _, first = cli_run
    again = benchmark.run_benchmark(
        "embedded", tmp_path / "again", SETTINGS, METHODS.split(","), max_slices=1, seed=3, crop=64, figure_slices=0
    )
    assert _scores(again) == _scores(first)
    other = benchmark.run_benchmark(
        "embedded", tmp_path / "other", SETTINGS[:1], ["noisy"], max_slices=1, seed=4, crop=64, figure_slices=0
    )
    assert _scores(other)[0][3] != _scores(first)[0][3]


def test_self_ensemble_views_change_the_dae_scores_and_are_recorded(benchmark, cli_run, tmp_path):
    _, single = cli_run
    assert single["dae_views"] == 1
    kwargs = {"max_slices": 1, "seed": 3, "crop": 64, "figure_slices": 0}
    ensemble = benchmark.run_benchmark("embedded", tmp_path / "x2", SETTINGS, ["dae"], views=2, **kwargs)
    assert ensemble["dae_views"] == 2 and "self-ensemble of 2 view(s)" in (tmp_path / "x2" / "results.md").read_text()
    dae = [score for score in _scores(single) if score[1] == "dae"]
    assert len(dae) == len(_scores(ensemble)) and all(a != b for a, b in zip(dae, _scores(ensemble), strict=True))


def test_summary_rows_are_means_and_stds_of_the_slices():
    records = [
        {"noise": "n", "method": "m", "psnr": p, "ssim": s, "mse": e, "seconds": 1.0}
        for p, s, e in [(20.0, 0.5, 0.01), (30.0, 0.7, 0.001)]
    ]
    (row,) = summarize(records)
    assert row["n"] == 2 and row["psnr"] == 25.0 and row["psnr_std"] == 5.0
    assert row["ssim"] == pytest.approx(0.6) and row["mse"] == pytest.approx(0.0055)
    assert dae_versus_median([{**row, "method": "median"}, {**row, "method": "dae", "ssim": 0.9}])[0]["dae_wins"]


def test_bad_arguments_name_the_problem(benchmark, tmp_path):
    with pytest.raises(MedDenoiseError, match=r"unknown method.*wiener.*choose from"):
        benchmark.run_benchmark("embedded", tmp_path, methods=["median,wiener"])
    with pytest.raises(NoiseSpecError, match="unknown noise model"):
        benchmark.run_benchmark("embedded", tmp_path, settings=["salt:p=0.1"], methods=["median"])
    with pytest.raises(MedDenoiseError, match="--crop 8"):
        benchmark.run_benchmark("embedded", tmp_path, methods=["median"], crop=8)
    assert not any(tmp_path.iterdir())  # nothing written for a run that could not start
    assert benchmark.main(["--out", str(tmp_path / "x"), "--methods", "wiener"]) == 2


def test_figure_has_full_resolution_panels(tmp_path, ct_slice):
    from matplotlib.image import imread

    from scripts.report import plot_comparison

    clean = ct_slice[:200, :240]
    noisy = np.clip(clean + 0.1, 0, 1)
    path = plot_comparison(clean, noisy, {"dae": clean}, {}, tmp_path / "f.png", title="t")
    height, width = imread(path).shape[:2]
    assert (height, width) == (40 + 34 + 200, 4 * 240)  # clean, noisy, dae, residual: one row, 1 pixel per pixel


def test_leave_source_out_reports_every_held_out_source_and_the_flat_region_check(benchmark, tmp_path, ct_volume_int16):
    from conftest import write_dicom_series

    from scripts.data import FLAT_REGION_CHECK, LEAVE_SOURCE_OUT

    data = tmp_path / "data"
    for index, source in enumerate(LEAVE_SOURCE_OUT):  # the shared data set's layout, real CT pixels
        write_dicom_series(data / source / "series", ct_volume_int16[index : index + 2])
    flat = data / FLAT_REGION_CHECK
    (data / "ct" / "fodicom_ct_samples" / "series" / "slice000.dcm").rename(flat)
    results = benchmark.run_benchmark(
        str(data),
        tmp_path / "out",
        SETTINGS[:1],
        ["noisy", "bm3d", "dae"],
        max_slices=1,
        crop=64,
        figure_slices=0,
        split="leave-source-out",
    )
    assert results["data"]["split"] == "leave-source-out"
    assert set(results["per_source"]) == set(LEAVE_SOURCE_OUT)
    assert {r["method"]: r["n"] for r in results["flat_region_check"]} == {"noisy": 1, "bm3d": 1, "dae": 1}
    assert {r["image"] for r in results["per_slice"] if r["flat_region_check"]} == {flat.name}
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "## DAE − bm3d (true sigma), PSNR dB, per modality and source" in markdown
    margins = markdown.split("per modality and source\n\n")[1].split("\n\n")[0].splitlines()
    assert margins[0].count("|") == 2 + 1 + len(results["per_modality"]) + len(LEAVE_SOURCE_OUT) + 1
    assert "## Flat-region check: PSNR (dB)" in markdown


def test_a_slice_whose_central_crop_is_blank_is_left_out(benchmark, tmp_path, ct_slice):
    import SimpleITK as sitk

    from scripts.data import LEAVE_SOURCE_OUT

    image = (ct_slice[::2, ::2] * 255).astype(np.uint8)  # 256 x 256, real CT pixels
    blank_centre = image.copy()
    blank_centre[64:192, 64:192] = 0  # a mammogram's black background where the benchmark crops
    for source in LEAVE_SOURCE_OUT:
        (tmp_path / source).mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(tmp_path / source / "anatomy.png"))
    sitk.WriteImage(sitk.GetImageFromArray(blank_centre), str(tmp_path / LEAVE_SOURCE_OUT[-1] / "background.png"))

    def names(crop):
        return sorted(
            Path(s["image_path"]).name
            for s in benchmark.benchmark_slices(str(tmp_path), None, "leave-source-out", crop)
        )

    assert names(64).count("background.png") == 0 and names(64).count("anatomy.png") == len(LEAVE_SOURCE_OUT)
    assert names(None).count("background.png") == 1, "the whole slice is not blank"
