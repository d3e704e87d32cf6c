"""Shared fixtures: the bundle root on sys.path (its package is named ``scripts``, Model Zoo convention) and real
images shipped inside pip packages."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "bundle"
sys.path.insert(0, str(BUNDLE))


@pytest.fixture(scope="session")
def embedded():
    """The embedded data list (real images inside pydicom-data, pydicom and nilearn)."""
    from scripts.data import embedded_datalist

    return embedded_datalist()


@pytest.fixture(scope="session")
def ct_slice(embedded) -> np.ndarray:
    """A real 512x512 CT slice (pydicom-data 693_UNCR, CQ500) scaled to [0, 1], float32 (H, W)."""
    from scripts.data import load_slices

    return load_slices([embedded["test"][0]], progress=False)[0]["label"][0]
