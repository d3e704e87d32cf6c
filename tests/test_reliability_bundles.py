"""Untrusted bundles are data: pickles that run code, expression arguments, foreign targets, odd zip entries and
mismatched weights or metadata are refused with a BundleError before any inference (test_package.py and
test_engine.py cover '..', absolute and symlink entries, os.system targets and weights of another network)."""

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

from scripts.bundle_archive import extract_bundle
from scripts.engine import build_network, load_bundle
from scripts.errors import BundleError


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    report_at_end(request.config)


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the shipped bundle's configs and weights to tamper with."""
    folder = tmp_path / "bundle"
    shutil.copytree(BUNDLE / "configs", folder / "configs")
    shutil.copytree(BUNDLE / "models", folder / "models", ignore=shutil.ignore_patterns("*.ts"))
    return folder


def refused(bundle: Path, message: str) -> BundleError:
    """Load a tampered bundle: it must be refused with ``message``, and its files stay as they were."""
    before = fingerprint(bundle)
    TALLY.faults += 1
    with pytest.raises(BundleError, match=message) as error:
        load_bundle(bundle, device="cpu")
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
        ({"_target_": "monai.networks.nets.NoSuchNet"}, "does not have"),
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
    refused(bundle, "not valid YAML")
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
