"""Untrusted bundles are data: pickles that run code, expression arguments, foreign targets, odd zip entries,
unhashed, broken or mismatched weights or metadata, and TorchScript programs are refused with a BundleError before
any inference (test_package.py and test_engine.py cover '..', absolute and symlink entries, os.system targets and
weights of another network)."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BUNDLE
from reliability_tally import TALLY, fingerprint, report_at_end, unchanged

from scripts.bundle_archive import extract_bundle, file_hash, record_hashes
from scripts.engine import build_network, load_bundle
from scripts.errors import BundleError


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the shipped bundle's configs, weights and their hashes to tamper with."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", folder / "configs")
    shutil.copytree(BUNDLE / "models", folder / "models", ignore=shutil.ignore_patterns("*.ts"))
    shutil.copy(BUNDLE / "large_files.yml", folder)
    return folder


def zipped(bundle: Path, archive: Path) -> Path:
    """``bundle`` packed as ``archive`` under one top-level folder, as a release zip holds it."""
    with zipfile.ZipFile(archive, "w") as handle:
        for path in bundle.rglob("*"):
            handle.write(path, f"b/{path.relative_to(bundle).as_posix()}")
    return archive


def refused(bundle: Path, message: str, rehash: bool = True, **options) -> BundleError:
    """Load a tampered bundle: it must be refused with ``message``, and its files stay as they were. ``rehash``
    records the tampered weights' hashes first, as an attacker who wrote the whole bundle would, so the defences
    behind the hash check are tested."""
    if rehash:
        record_hashes(bundle)
    before = fingerprint(bundle)
    TALLY.faults += 1
    with pytest.raises(BundleError, match=message) as error:
        load_bundle(bundle, device="cpu", **options)
    assert unchanged(bundle, before)
    return error.value


class RunsCode:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do with a shell command instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_a_checkpoint_that_runs_code_is_refused_and_the_code_never_runs(bundle, tmp_path):
    marker = tmp_path / "code_ran"
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({**state, "payload": RunsCode(marker)}, bundle / "models" / "model.pt")
    refused(bundle, "not a loadable weights file")
    assert not marker.exists(), "unpickling the checkpoint ran code"


@pytest.mark.parametrize(
    ("network_def", "message"),
    [
        ({"_target_": "scripts.networks.DenoisingAutoencoder", "features": "$__import__('os').system('id')"}, "expr"),
        ({"_target_": "scripts.networks.DenoisingAutoencoder", "in_channels": "@in_channels"}, "expression"),
        ({"_target_": "$scripts.networks.DenoisingAutoencoder"}, "allowed are"),
        ({"_target_": "monai.networks.nets.os.system", "command": "id"}, "allowed are"),
        ({"_target_": "monai.networks.nets.NoSuchNet"}, "allowed are"),
        # a classifier that downloads ImageNet weights when built, and an allowed network asked to fetch weights
        (
            {
                "_target_": "monai.networks.nets.DenseNet121",
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 1,
                "pretrained": True,
            },
            "would load or download",
        ),
        ({"_target_": "monai.networks.nets.Transchex", "in_channels": 1, "img_size": [64, 64]}, "allowed are"),
        (
            {
                "_target_": "monai.networks.nets.UNet",
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 1,
                "channels": [4, 8],
                "strides": [2],
                "pretrained": True,
            },
            "would load or download weights",
        ),
        (
            {"_target_": "scripts.networks.DenoisingAutoencoder", "pretrained_url": "http://127.0.0.1:9/w.pt"},
            "download",
        ),
        # 1.4 TB of weights: refused from the parameter count, before any allocation
        ({"_target_": "scripts.networks.DenoisingAutoencoder", "features": [200000, 400000, 800000]}, "parameters"),
        (
            {
                "_target_": "monai.networks.nets.UNet",
                "spatial_dims": 2,
                "in_channels": 1,
                "out_channels": 1,
                "channels": [100000, 200000],
                "strides": [2],
            },
            "parameters",
        ),
        ({"_target_": "torch.nn.Identity"}, "allowed are"),
        ({"_target_": "scripts.networks.DenoisingAutoencoder", "no_such_argument": 1}, "invalid arguments"),
        ({"features": [64, 64]}, "_target_"),
    ],
)
def test_network_def_is_built_from_the_allow_list_with_plain_values(bundle, network_def, message):
    config_file = bundle / "configs" / "inference.json"
    config = yaml.safe_load(config_file.read_text())
    config["network_def"] = network_def
    config_file.write_text(json.dumps(config))
    refused(bundle, message)


def _tamper_weights(bundle: Path, change) -> None:
    checkpoint = bundle / "models" / "model.pt"
    state = torch.load(checkpoint, weights_only=True)
    change(state)
    torch.save(state, checkpoint)


def test_missing_extra_or_reshaped_weights_are_refused(bundle):
    first = next(iter(torch.load(bundle / "models" / "model.pt", weights_only=True)))
    changes = {
        "missing": lambda state: state.pop(first),
        "unexpected": lambda state: state.update(extra_layer=torch.zeros(3)),
        "do not fit": lambda state: state.update({first: torch.zeros(1, 2, 3)}),
    }
    for message, change in changes.items():
        shutil.copy(BUNDLE / "models" / "model.pt", bundle / "models" / "model.pt")
        _tamper_weights(bundle, change)
        refused(bundle, message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda meta: meta.update(version="latest"), "not a semantic version"),
        (lambda meta: meta.pop("version"), "not a semantic version"),
        (lambda meta: meta["network_data_format"]["inputs"]["image"].update(num_channels=2), "2 input channels"),
        (lambda meta: meta["network_data_format"]["inputs"]["image"].update(num_channels="1"), "input channels"),
        (lambda meta: meta["network_data_format"]["inputs"]["image"].update(num_channels=3), "metadata says 3"),
    ],
)
def test_metadata_that_does_not_match_the_network_is_refused(bundle, change, message):
    meta_file = bundle / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    change(metadata)
    meta_file.write_text(json.dumps(metadata))
    refused(bundle, message)


def test_malformed_configs_are_refused(bundle):
    meta_file = bundle / "configs" / "metadata.json"
    for content, message in (("[1, 2]", "JSON object"), ("{not json", "not valid JSON")):
        meta_file.write_text(content)
        refused(bundle, message)
    shutil.copy(BUNDLE / "configs" / "metadata.json", meta_file)
    (bundle / "configs" / "inference.json").write_text("network_def: [unclosed")
    refused(bundle, "not valid JSON")
    (bundle / "models" / "model.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    (bundle / "configs" / "inference.json").write_text((BUNDLE / "configs" / "inference.json").read_text())
    refused(bundle, "not a loadable weights file")


@pytest.mark.parametrize("name", ["b\\..\\evil.txt", "C:/evil.txt", "b/x/../../../evil.txt", "/b/evil.txt"])
def test_zip_entries_that_could_escape_are_refused(tmp_path, name):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("b/configs/metadata.json", '{"version": "0.1.0"}')
        handle.writestr(name, "x")
    before = fingerprint(archive)
    TALLY.faults += 1
    with pytest.raises(BundleError, match="unsafe entry"):
        extract_bundle(archive, cache_dir=tmp_path / "cache")
    assert unchanged(archive, before)
    assert not list(tmp_path.rglob("evil.txt")) and not (tmp_path / "cache").exists()


def test_the_shipped_bundle_still_loads_and_builds_plainly():
    model = load_bundle(BUNDLE, device="cpu")
    config = yaml.safe_load((BUNDLE / "configs" / "inference.json").read_text())
    assert type(model.network) is type(build_network(config["network_def"]))


def _set_network(bundle: Path, network_def: dict) -> None:
    """Make ``bundle`` a consistent bundle of ``network_def`` with its own freshly initialised weights."""
    config_file = bundle / "configs" / "inference.json"
    config = json.loads(config_file.read_text())
    config["network_def"] = network_def
    config_file.write_text(json.dumps(config))
    torch.save(build_network(network_def).state_dict(), bundle / "models" / "model.pt")


def test_an_allowed_network_with_weights_that_fit_loads(bundle):
    unet = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 1,
            "channels": [4, 8], "strides": [2]}  # fmt: skip
    _set_network(bundle, unet)
    record_hashes(bundle)
    assert type(load_bundle(bundle, device="cpu").network).__name__ == "UNet"


def test_a_network_that_does_not_give_one_image_per_input_is_refused_at_load(bundle):
    """Three output channels (a segmentation network) would be 'denoised' from channel 0; refused by the probe."""
    _set_network(bundle, {"_target_": "monai.networks.nets.UNet", "spatial_dims": 2, "in_channels": 1,
                          "out_channels": 3, "channels": [4, 8], "strides": [2]})  # fmt: skip
    refused(bundle, "3 output channels")


WEIGHT_HASHES = {
    "not listed": (lambda entries: [e for e in entries if e["path"] != "models/model.pt"], "is not listed"),
    "no hash_val": (lambda entries: [{k: v for k, v in e.items() if k != "hash_val"} for e in entries], "no hash_val"),
    "no large_files.yml": (None, "is not listed"),
    "md5": (
        lambda entries: [
            {**e, "hash_type": "md5", "hash_val": file_hash(e["path"], "md5")}
            for e in entries
            if Path(e["path"]).is_file()
        ],
        "only sha256",
    ),
    "another file's sha256": (lambda entries: [{**e, "hash_val": "0" * 64} for e in entries], "does not match"),
}


@pytest.mark.parametrize("case", WEIGHT_HASHES)
def test_weights_whose_sha256_is_not_recorded_are_refused(bundle, case, monkeypatch):
    """A tampered model.pt (a valid checkpoint: one weight changed) in a folder whose large_files.yml omits it, has no
    hash, uses md5 (even a matching one) or another hash: every weight file must match a recorded sha256."""
    _tamper_weights(bundle, lambda state: next(v for v in state.values() if v.is_floating_point()).mul_(-1))
    change, message = WEIGHT_HASHES[case]
    large_files_yml = bundle / "large_files.yml"
    if change is None:
        large_files_yml.unlink()
    else:
        monkeypatch.chdir(bundle)  # the md5 case hashes the entries' paths
        entries = yaml.safe_load(large_files_yml.read_text())["large_files"]
        large_files_yml.write_text(yaml.safe_dump({"large_files": change(entries)}))
    refused(bundle, message, rehash=False)


def test_the_shipped_bundle_records_the_sha256_of_its_weights():
    entries = {e["path"]: e for e in yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]}
    for path in ("models/model.pt", "models/model.ts"):
        assert entries[path]["hash_type"] == "sha256" and entries[path]["hash_val"] == file_hash(BUNDLE / path), path


def test_a_zip_whose_large_files_yml_omits_the_weights_is_refused(bundle, tmp_path):
    _tamper_weights(bundle, lambda state: next(v for v in state.values() if v.is_floating_point()).mul_(-1))
    (bundle / "large_files.yml").write_text("large_files: []\n")
    TALLY.faults += 1
    with pytest.raises(BundleError, match="is not listed"):
        load_bundle(zipped(bundle, tmp_path / "tampered.zip"), device="cpu")


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["NaN", "Inf"])
def test_weights_with_nan_or_inf_are_refused_at_load(bundle, value):
    """Before: loaded, and every image came out all zeros with exit 0."""
    _tamper_weights(bundle, lambda state: next(v for k, v in state.items() if k.endswith("conv.weight")).fill_(value))
    refused(bundle, "NaN or Inf")


@pytest.mark.parametrize(
    ("content", "holds"),
    [([1, 2, 3], "list"), (torch.zeros(3), "Tensor"), (None, "NoneType"), ({"a": 1}, "dict")],
    ids=["list", "tensor", "None", "dict-of-int"],
)
def test_a_checkpoint_that_is_not_a_state_dict_is_refused(bundle, content, holds):
    torch.save(content, bundle / "models" / "model.pt")
    refused(bundle, f"holds {holds}, not a state dict")


def test_a_scalar_saved_as_a_one_element_tensor_is_refused(bundle):
    """load_state_dict silently accepts shape (1,) for a scalar; a reshaped tensor is refused like any other."""
    _tamper_weights(bundle, lambda state: state.update({k: v.reshape(1) for k, v in state.items() if v.dim() == 0}))
    refused(bundle, r"has shape \(1,\), the network \(\)")


NOT_UTF8 = b'{"version": "0.1.0", "name": "caf\xe9"}'


@pytest.mark.parametrize(
    ("file_name", "content", "message"),
    [
        ("metadata.json", NOT_UTF8, "not UTF-8"),
        ("inference.json", b'{"network_def": "caf\xe9"}', "not UTF-8"),
        ("metadata.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        ("inference.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=["metadata-latin1", "config-latin1", "metadata-deep", "config-deep"],
)
def test_unreadable_configs_are_refused(bundle, file_name, content, message):
    (bundle / "configs" / file_name).write_bytes(content)
    refused(bundle, message)


@pytest.mark.parametrize(
    "change",
    [
        lambda meta: meta.update(network_data_format=[1, 2]),
        lambda meta: meta["network_data_format"].update(inputs="image"),
        lambda meta: meta["network_data_format"]["inputs"].update(image=None),
    ],
    ids=["format-list", "inputs-string", "image-null"],
)
def test_metadata_of_the_wrong_type_is_refused(bundle, change):
    meta_file = bundle / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    change(metadata)
    meta_file.write_text(json.dumps(metadata))
    refused(bundle, "must be a JSON object")


def _odd_zip(path: Path, entries: dict[str, bytes], compress_type: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w") as handle:
        handle.writestr("b/configs/metadata.json", '{"version": "0.1.0"}')
        for name, content in entries.items():
            handle.writestr(zipfile.ZipInfo(name), content, compress_type=compress_type)
    return path


def _flag_encrypted(path: Path) -> Path:
    """Set the 'encrypted' bit of the last entry in both its local and its central header."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = data.rindex(signature) + offset
        data[at] |= 0x1
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: _odd_zip(p, {"b/models": b"a file", "b/models/model.pt": b"weights"}), "both a file and a folder"),
        (lambda p: _odd_zip(p, {"b/models/model.pt": b"weights", "b/models/model.pt/x": b"x"}), "both a file"),
        (lambda p: _odd_zip(p, {"b/LICENSE": b"a", "b/LICENSE ": b"b", "b/./LICENSE": b"c"}), "appears twice"),
        (lambda p: _flag_encrypted(_odd_zip(p, {"b/LICENSE": b"secret"})), "encrypted"),
        (lambda p: _odd_zip(p, {"b/LICENSE": b"text"}, zipfile.ZIP_BZIP2), "compression method 12"),
    ],
    ids=["file-then-folder", "folder-under-file", "same-path-twice", "encrypted", "bzip2"],
)
def test_zip_entries_that_cannot_be_extracted_plainly_are_refused(tmp_path, make, message):
    archive = make(tmp_path / "odd.zip")
    before = fingerprint(archive)
    TALLY.faults += 1
    with pytest.raises(BundleError, match=message):
        extract_bundle(archive, cache_dir=tmp_path / "cache")
    assert unchanged(archive, before)


class WritesAFile(torch.nn.Module):
    """A TorchScript program that writes into ``path`` whenever it runs: what a hostile model.ts can do."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.from_file(self.path, shared=True, size=4, dtype=torch.uint8).fill_(88)
        return x


class LoopsForever(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while bool(x.sum() > -1.0):
            x = x.abs()
        return x


class Raises(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("a bundle's own error")


class ReturnsAPair(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, x


def _with_program(bundle: Path, program: torch.nn.Module) -> Path:
    """``bundle`` with ``program`` as its models/model.ts and every hash recorded, as its author would ship it."""
    torch.jit.script(program).save(str(bundle / "models" / "model.ts"))
    record_hashes(bundle)
    return bundle


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip-with-matching-hashes"])
def test_a_third_party_torchscript_program_never_runs(bundle, tmp_path, packed):
    """Before: --torchscript ran a bundle's model.ts, whose forward wrote a file (from a folder and from a zip whose
    hashes matched). Now only MedDenoise's own export runs; the default never loads model.ts at all."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"safe")
    source = _with_program(bundle, WritesAFile(str(victim)))
    if packed:
        source = zipped(bundle, tmp_path / "hostile.zip")
    TALLY.faults += 1
    with pytest.raises(BundleError, match="not MedDenoise's own export"):
        load_bundle(source, device="cpu", torchscript=True)
    model = load_bundle(source, device="cpu")  # the default runs the weights through the allow-list
    assert not isinstance(model.network, torch.jit.ScriptModule)
    assert victim.read_bytes() == b"safe"


@pytest.mark.parametrize("program", [LoopsForever, Raises, ReturnsAPair])
def test_a_torchscript_that_loops_raises_or_returns_a_pair_gives_a_clear_error(bundle, program):
    """Before: an endless loop hung the run, the others gave raw tracebacks. Refused before it is loaded."""
    _with_program(bundle, program())
    refused(bundle, "not MedDenoise's own export", torchscript=True)
    assert load_bundle(bundle, device="cpu").network is not None  # and a default run never touches it


def test_the_shipped_torchscript_export_still_runs(tmp_path):
    """The shipped bundle's own model.ts (its sha256 recorded in large_files.yml), also from a copy of the bundle."""
    assert isinstance(load_bundle(BUNDLE, device="cpu", torchscript=True).network, torch.jit.ScriptModule)
    copy = tmp_path / "copy"
    for part in ("configs", "models"):
        shutil.copytree(BUNDLE / part, copy / part)
    shutil.copy(BUNDLE / "large_files.yml", copy)
    assert isinstance(load_bundle(copy, device="cpu", torchscript=True).network, torch.jit.ScriptModule)
