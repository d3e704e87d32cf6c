"""The commands of the bundle's ``docs/README.md``, run as written (plus small-data overrides) from the bundle's folder,
as a user of an extracted release runs them, so the README cannot drift; metadata against our schema."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import monai.bundle
import numpy as np
import pytest
import torch
from conftest import BUNDLE, ROOT

from scripts.bundle_archive import validate_metadata
from scripts.engine import build_network, read_bundle_config
from scripts.errors import BundleError

README = BUNDLE / "docs" / "README.md"
META_FILE = BUNDLE / "configs" / "metadata.json"

#: Every command of the bundle README -> the test that runs it (a fragment that picks the command out).
EXERCISED = {
    "--config_file configs/train.yaml": "tests/test_training.py::test_train_config_runs_two_epochs",
    "--nproc_per_node=2 -m monai.bundle run": "tests/test_multigpu.py::test_torchrun_trains_on_two_gloo_processes",
    "--rdzv_endpoint=HOST:29500": "tests/test_multigpu.py::test_multi_node_command_is_the_single_node_run",
    "configs/evaluate.yaml": "tests/test_zoo.py::test_evaluate_config_scores_every_setting",
    "configs/train_from_scratch.yaml": (
        "tests/test_training.py::test_resumed_training_reaches_the_same_state_as_an_uninterrupted_run"
    ),
    "configs/inference.json --dataset_dir": "tests/test_zoo_checks.py::test_readme_works_inside_an_extracted_release",
    "verify_metadata": "tests/test_zoo_checks.py::test_readme_works_inside_an_extracted_release",
    "verify_net_in_out": "tests/test_zoo.py::test_verify_net_in_out_passes",
    "ckpt_export": "tests/test_zoo.py::test_ckpt_export_matches_the_checkpoint",
}


def load_tool(name: str):
    """A runnable file of the top-level ``scripts/`` folder, imported so its ``main(argv)`` runs in this process."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_blocks(language: str) -> list[str]:
    """The code blocks of the bundle README in ``language`` (bash, python)."""
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """The commands in the ```bash blocks of the bundle README, one per line."""
    return [line.strip() for block in readme_blocks("bash") for line in block.splitlines() if line.strip()]


def readme_command(fragment: str) -> str:
    (command,) = [c for c in readme_commands() if fragment in c]
    return command


def argv_and_env(command: str, cwd: Path = BUNDLE) -> tuple[list[str], dict]:
    """A README command as this interpreter runs it: ``python`` and ``torchrun`` from the virtualenv, and a leading
    ``VAR=value`` (relative to the bundle folder ``cwd``) in the environment."""
    tokens = shlex.split(command)
    env = dict(os.environ)
    while "=" in tokens[0]:
        name, value = tokens.pop(0).split("=", 1)
        env[name] = str(cwd / value)
    program = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[tokens[0]]
    return program + tokens[1:], env


def run_readme(command: str, *extra: str, cwd: Path = BUNDLE, **kwargs) -> subprocess.CompletedProcess:
    """Run a README command (plus ``extra`` arguments) in a new process from the bundle folder ``cwd`` (the
    repository's ``bundle/`` or an extracted release); it must succeed."""
    argv, env = argv_and_env(command, cwd)
    result = subprocess.run([*argv, *extra], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def bundle_cli_kwargs(command: str) -> dict:
    """``python -m monai.bundle <sub-command> [net_id] --k v ...`` as keyword arguments of ``monai.bundle.<sub-command>``
    (run in this process, from the bundle folder: it saves starting Python and importing MONAI once more)."""
    tokens = shlex.split(command)
    options = tokens[tokens.index("monai.bundle") + 2 :]
    kwargs = {} if options[0].startswith("--") else {"net_id": options.pop(0)}
    for key, value in zip(options[::2], options[1::2], strict=True):
        kwargs[key.lstrip("-")] = ast.literal_eval(value) if value.startswith("[") else value
    return kwargs


def test_every_readme_command_is_exercised():
    commands = readme_commands()
    assert len(commands) >= 8
    for command in commands:
        owners = [fragment for fragment in EXERCISED if fragment in command]
        assert len(owners) == 1, f"README command not exercised by exactly one test: {command}"
    for test in set(EXERCISED.values()):
        path, name = test.split("::")
        assert f" {name}" in (ROOT / path).read_text(), f"{test} does not exist"


def test_metadata_validates_and_matches_the_network():
    metadata = validate_metadata(META_FILE)
    assert metadata["changelog"][metadata["version"]]
    _, inference = read_bundle_config(BUNDLE)
    network = build_network(inference["network_def"])
    assert network.in_channels == metadata["network_data_format"]["inputs"]["image"]["num_channels"]
    assert network.out_channels == metadata["network_data_format"]["outputs"]["pred"]["num_channels"]
    # the versions are the ones this bundle runs with
    assert metadata["monai_version"] == monai.__version__
    assert metadata["pytorch_version"] == torch.__version__.split("+")[0]
    assert metadata["numpy_version"] == np.__version__


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.pop("numpy_version"), "'numpy_version' is a required property"),
        (lambda m: m.update(version="1.0"), "version: '1.0' does not match"),
        (lambda m: m.update(monai_version=">=1.4"), "monai_version: '>=1.4' does not match"),
        (lambda m: m["changelog"].pop(m["version"]), "changelog: has no entry for the current version"),
        (lambda m: m["network_data_format"]["outputs"].update(denoised=m["network_data_format"]["outputs"].pop("pred")),
         "network_data_format/outputs: 'pred' is a required property"),
        (lambda m: m["network_data_format"]["inputs"]["image"].update(num_channels=2),
         "network_data_format/inputs/image/num_channels"),
        (lambda m: m["network_data_format"]["inputs"]["image"].update(value_range=[0, 255]),
         "network_data_format/inputs/image/value_range"),
        (lambda m: m["network_data_format"]["inputs"]["image"].update(spatial_shape=["*"]),
         "network_data_format/inputs/image/spatial_shape"),
    ],
)  # fmt: skip
def test_schema_names_what_is_wrong(change, message):
    metadata = copy.deepcopy(json.loads(META_FILE.read_text()))
    change(metadata)
    with pytest.raises(BundleError, match=re.escape(message)):
        validate_metadata(metadata)


def test_verify_net_in_out_passes(monkeypatch, caplog):
    monkeypatch.chdir(BUNDLE)
    with caplog.at_level("INFO"):
        monai.bundle.verify_net_in_out(**bundle_cli_kwargs(readme_command("verify_net_in_out")))
    assert "data shape of network is verified with no error" in caplog.text


def test_ckpt_export_matches_the_checkpoint(tmp_path, ct_slice):
    # a new Python process, as written: it also shows that PYTHONPATH=. is what these commands need
    run_readme(readme_command("ckpt_export").replace("models/model.ts", str(tmp_path / "model.ts")))

    extra = {"metadata.json": "", "inference.json": ""}
    exported = torch.jit.load(str(tmp_path / "model.ts"), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads(META_FILE.read_text())["version"]
    assert "network_def" in json.loads(extra["inference.json"])
    _, inference = read_bundle_config(BUNDLE)
    network = build_network(inference["network_def"]).eval()
    network.load_state_dict(torch.load(BUNDLE / "models" / "model.pt", weights_only=True))
    # a real CT slice with an odd size (the network pads internally), as many channels as the network takes
    image = torch.from_numpy(ct_slice[:301, :457]).expand(1, network.in_channels, -1, -1).contiguous()
    with torch.no_grad():
        expected, actual = network(image), exported(image)
    assert actual.shape == expected.shape == (1, 1, 301, 457)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_evaluate_config_scores_every_setting(tmp_path, monkeypatch):
    settings = ["gaussian:factor=0.1,mean=0,std=1", "poisson:factor=0.2,lam=5"]
    monkeypatch.chdir(BUNDLE)
    monai.bundle.run(
        **bundle_cli_kwargs(readme_command("configs/evaluate.yaml")),
        eval_settings=settings,
        eval_crop=64,
        max_slices_per_volume=1,
        eval_output_dir=str(tmp_path / "eval"),
        output_dir=str(tmp_path / "runs"),
        logging_file=False,
    )
    rows = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert [row["noise"] for row in rows] == settings
    assert all(row["n"] == 3 for row in rows)  # one test slice each of CT, MR and X-ray
    assert all(0 < row["ssim"] <= 1 and row["mse"] > 0 and np.isfinite(row["psnr"]) for row in rows)
    assert (tmp_path / "eval" / "evaluation.csv").read_text().count("\n") == 1 + len(settings)


def test_denoise_command_takes_the_release_zip(tmp_path, embedded, monkeypatch):
    from scripts.bundle_archive import pack_bundle
    from scripts.image_io import read_image

    release = pack_bundle(BUNDLE, tmp_path / "dist", "multimodal_denoising")
    source = embedded["test"][0]["image"]  # a real CT slice
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert load_tool("denoise.py").main([source, "-o", str(tmp_path / "ct.nii.gz"), "--bundle", str(release)]) == 0
    original, denoised = read_image(source).array, read_image(tmp_path / "ct.nii.gz").array
    assert denoised.shape == original.shape and denoised.dtype == original.dtype
    assert 0 < np.abs(denoised.astype(float) - original).mean() < 0.1 * np.ptp(original)
    assert list((tmp_path / "cache" / "meddenoise" / "bundles").glob("*/meddenoise_multimodal_denoising"))
