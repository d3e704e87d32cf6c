"""The release zip: built like the Model Zoo's, loaded back from a fresh folder, and refused when unsafe or altered."""

from __future__ import annotations

import ast
import json
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import BUNDLE, research_contents
from test_zoo import load_tool

from scripts.bundle_archive import extract_bundle, file_hash, large_files, pack_bundle
from scripts.engine import denoise_volume, load_bundle
from scripts.errors import BundleError

ZIP_NAME = "meddenoise_multimodal_denoising_v{version}.zip"


@pytest.fixture
def bundle_copy(tmp_path) -> Path:
    """A copy of the bundle to alter (without runs, evaluation outputs or caches)."""
    return Path(
        shutil.copytree(BUNDLE, tmp_path / "bundle", ignore=shutil.ignore_patterns("runs", "eval", "__pycache__"))
    )


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """The zip that ``scripts/package_bundle.py --output_dir DIR`` builds (and checks by inference)."""
    output_dir = tmp_path_factory.mktemp("dist")
    assert load_tool("package_bundle.py").main(["--output_dir", str(output_dir)]) == 0
    version = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    return output_dir / ZIP_NAME.format(version=version)


def test_release_zip_follows_the_zoo_layout(release):
    with zipfile.ZipFile(release) as archive:
        names = archive.namelist()
        packed_large_files = archive.read("meddenoise_multimodal_denoising/large_files.yml").decode()
    assert {name.split("/")[0] for name in names} == {"meddenoise_multimodal_denoising"}
    inside = {name.split("/", 1)[1] for name in names}
    assert {"LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "scripts/__init__.py"} <= (
        inside
    )
    assert "models/model.pt" in inside
    assert not [n for n in inside if "__pycache__" in n or n.endswith(".pyc") or n.split("/")[0] in ("runs", "eval")]
    assert file_hash(BUNDLE / "models" / "model.pt") in packed_large_files


def test_release_zip_ships_no_research_or_experiment_log(release):
    """The lab stays out of the product: no file of ``research/`` (by content), no experiment log, no config or
    code that needs the ``research`` package."""
    research = research_contents()
    assert "research/experiments.md" in research.values() and "research/configs/sure.yaml" in research.values()
    with zipfile.ZipFile(release) as archive:
        members = {name: archive.read(name) for name in archive.namelist() if not name.endswith("/")}
    assert not [name for name, content in members.items() if content in research]
    assert not [name for name in members if "experiment" in name.lower()]
    assert not [name for name, content in members.items() if _uses_research(name, content)]


def _uses_research(name: str, content: bytes) -> bool:
    """Whether a packed file runs code of the ``research`` package: a Python import of it, or a config ``_target_``
    or ``$`` expression that names it (comments and docs may point to it)."""
    if name.endswith(".py"):
        imported = [
            *(
                alias.name
                for node in ast.walk(ast.parse(content))
                if isinstance(node, ast.Import)
                for alias in node.names
            ),
            *(node.module or "" for node in ast.walk(ast.parse(content)) if isinstance(node, ast.ImportFrom)),
        ]
        return any(module.split(".")[0] == "research" for module in imported)
    if "/configs/" in name and name.endswith((".yaml", ".json")):
        code = [text for text in _config_strings(yaml.safe_load(content)) if text.startswith("$") or " " not in text]
        return any(re.search(r"\bresearch\.", text) for text in code)
    return False


def _config_strings(config) -> list[str]:
    if isinstance(config, dict):
        return [text for value in config.values() for text in _config_strings(value)]
    if isinstance(config, list):
        return [text for value in config for text in _config_strings(value)]
    return [config] if isinstance(config, str) else []


def test_release_zip_round_trips(release, ct_slice, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    before = file_hash(release)
    from_zip = load_bundle(release, device="cpu")
    assert Path(from_zip.source).is_relative_to(tmp_path / "cache")
    assert load_bundle(release, device="cpu").source == from_zip.source  # extracted once, then reused
    assert file_hash(release) == before  # the zip is only read
    from_folder = load_bundle(BUNDLE, device="cpu")
    assert from_zip.version == from_folder.version
    expected = denoise_volume(ct_slice, from_folder)
    denoised = denoise_volume(ct_slice, from_zip)
    assert denoised.shape == ct_slice.shape
    np.testing.assert_array_equal(denoised, expected)


def _zip(path: Path, entries: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = 0o120777 << 16  # S_IFLNK
            archive.writestr(info, "/etc/passwd")
    return path


METADATA = b'{"version": "0.1.0"}'


@pytest.mark.parametrize(
    ("entries", "symlink", "message"),
    [
        ({"b/configs/metadata.json": METADATA, "b/../evil.txt": b"x"}, None, "unsafe entry 'b/../evil.txt'"),
        ({"../evil.txt": b"x"}, None, "unsafe entry '../evil.txt'"),
        ({"/tmp/evil.txt": b"x", "b/configs/metadata.json": METADATA}, None, "unsafe entry '/tmp/evil.txt'"),
        ({"b/configs/metadata.json": METADATA}, "b/models/model.pt", "symbolic link"),
        ({"a/configs/metadata.json": METADATA, "b/x": b"x"}, None, "one top-level bundle folder"),
    ],
)
def test_unsafe_zip_is_refused(tmp_path, entries, symlink, message):
    archive = _zip(tmp_path / "unsafe.zip", entries, symlink)
    with pytest.raises(BundleError, match=message.replace(".", r"\.")):
        extract_bundle(archive, cache_dir=tmp_path / "cache" / "deep")
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (tmp_path / "cache" / "deep").exists()


def test_zip_of_a_bundle_folder_content_is_accepted(bundle_copy, tmp_path):
    flat = tmp_path / "flat.zip"
    with zipfile.ZipFile(flat, "w") as archive:
        for path in (bundle_copy / "configs").iterdir():
            archive.write(path, f"configs/{path.name}")
        archive.write(bundle_copy / "models" / "model.pt", "models/model.pt")
    extracted = extract_bundle(flat, cache_dir=tmp_path / "cache")
    assert (extracted / "models" / "model.pt").read_bytes() == (bundle_copy / "models" / "model.pt").read_bytes()
    assert extracted.parent == tmp_path / "cache"


def test_oversized_or_non_zip_is_refused(tmp_path):
    from scripts import bundle_archive

    archive = _zip(tmp_path / "big.zip", {"b/configs/metadata.json": METADATA, "b/models/model.pt": bytes(4096)})
    with zipfile.ZipFile(archive) as opened, pytest.raises(BundleError, match="unpacks to 4116 bytes"):
        bundle_archive.check_members(opened, max_bytes=1000)
    fake = tmp_path / "fake.zip"
    fake.write_text("not a zip")
    with pytest.raises(BundleError, match="not a zip file"):
        load_bundle(fake)


def test_altered_weights_are_refused(bundle_copy, tmp_path):
    release = pack_bundle(bundle_copy, tmp_path / "dist", "multimodal_denoising")
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(release) as source, zipfile.ZipFile(altered, "w") as target:
        for info in source.infolist():
            content = bytearray(source.read(info))
            if info.filename.endswith("model.pt"):
                content[len(content) // 2] ^= 1  # one flipped bit: the zip's CRC is recomputed, only the hash can tell
            target.writestr(info, bytes(content))
    with pytest.raises(BundleError, match=r"models/model\.pt does not match the sha256 hash"):
        extract_bundle(altered, cache_dir=tmp_path / "cache")


def test_weights_can_be_referenced_instead_of_packed(bundle_copy, tmp_path):
    (bundle_copy / "large_files.yml").write_text("large_files:\n  - path: models/model.pt\n    hash_type: sha256\n")
    with pytest.raises(BundleError, match="has no url; pass weights_url"):
        pack_bundle(bundle_copy, tmp_path / "dist", "multimodal_denoising", include_weights=False)
    release = pack_bundle(
        bundle_copy, tmp_path / "dist", "multimodal_denoising", False, weights_url="https://example.org/v0.1.0/"
    )
    extracted = extract_bundle(release, cache_dir=tmp_path / "cache")
    assert not (extracted / "models" / "model.pt").exists()
    (entry,) = [e for e in large_files(extracted) if e["path"] == "models/model.pt"]
    assert entry["url"] == "https://example.org/v0.1.0/model.pt"
    assert entry["hash_val"] == file_hash(bundle_copy / "models" / "model.pt")


def test_packing_refuses_a_bundle_with_invalid_metadata(bundle_copy, tmp_path):
    meta_file = bundle_copy / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    metadata["version"] = "9.9.9"  # no changelog entry for it
    meta_file.write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"changelog: has no entry for the current version .9\.9\.9."):
        pack_bundle(bundle_copy, tmp_path / "dist", "multimodal_denoising")
    assert not (tmp_path / "dist").exists() or not list((tmp_path / "dist").iterdir())
