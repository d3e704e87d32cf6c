"""Config overlays address list items by name, never by position: an id such as ``train#handlers#2`` silently hits
whatever sits there once the list changes, so every config (shipped and research) is checked for one."""

from __future__ import annotations

import re

import pytest
from conftest import BUNDLE, ROOT
from monai.bundle import ConfigParser

CONFIGS = sorted([*(BUNDLE / "configs").glob("*.yaml"), *(BUNDLE / "configs").glob("*.json")]) + sorted(
    (ROOT / "research" / "configs").glob("*.yaml")
)
#: A list index inside a config id (``a#3``, ``a#-1#b``) or inside a reference (``@a#0``).
POSITIONAL = re.compile(r"#-?\d+(#|$)")
POSITIONAL_REFERENCE = re.compile(r"@[\w#]*#-?\d+\b")


def _keys_and_values(config):
    """Every key (an id where it holds ``#``) and every string value of a config, at any depth."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield "key", str(key)
            yield from _keys_and_values(value)
    elif isinstance(config, list):
        for value in config:
            yield from _keys_and_values(value)
    elif isinstance(config, str):
        yield "value", config


def positional_addresses(config: dict) -> list[str]:
    """The ids and references of ``config`` that name a list item by its index. A plain key such as a channel
    number (``channel_def: {"0": ...}``) is a dictionary key, not an address."""
    return [
        text
        for kind, text in _keys_and_values(config)
        if (POSITIONAL if kind == "key" else POSITIONAL_REFERENCE).search(text)
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=[path.relative_to(ROOT).as_posix() for path in CONFIGS])
def test_no_config_addresses_a_list_item_by_position(path):
    assert len(CONFIGS) >= 12
    assert positional_addresses(ConfigParser.load_config_file(str(path))) == []


def test_the_check_catches_positional_ids_and_references():
    """The check itself finds the forms that used to be in the configs."""
    assert positional_addresses({"train#preprocessing#transforms#5": {"keys": "image"}}) == [
        "train#preprocessing#transforms#5"
    ]
    assert positional_addresses({"validate#handlers#-1#_disabled_": True}) == ["validate#handlers#-1#_disabled_"]
    assert positional_addresses({"a": {"b": "$@train#handlers#0.attach(x)"}}) == ["$@train#handlers#0.attach(x)"]
    assert positional_addresses({"validate#evaluator#metric_cmp_fn": "$min", "checkpoint_name": "model_2.pt"}) == []


def test_objective_overlays_replace_the_named_transform():
    """``research/configs/recorrupted.yaml`` replaces ``train#objective_transform`` and the training chain then
    holds the recorruption where the blind-spot masking was, nothing else changed."""
    names = ["train.yaml", "train_selfsupervised.yaml"]
    base, overlaid = ConfigParser(), ConfigParser()
    base.read_config([str(BUNDLE / "configs" / name) for name in names])
    overlaid.read_config(
        [str(BUNDLE / "configs" / name) for name in names] + [str(ROOT / "research" / "configs" / "recorrupted.yaml")]
    )
    before, after = (parser.get("train#preprocessing#transforms") for parser in (base, overlaid))
    assert before == after and "@train#objective_transform" in before
    assert base.get("train#objective_transform#_target_") == "scripts.selfsupervised.BlindSpotMaskd"
    assert overlaid.get("train#objective_transform#_target_") == "research.recorrupted.Recorruptd"
    assert overlaid.get("checkpoint_name") == "model_recorrupted.pt"
    assert overlaid.get("validate#handlers")[0]["key_metric_filename"] == "@checkpoint_name"
