"""The reliability tests' running count, printed as one line at the end of the pytest run.

Reliability test modules call :func:`report_at_end` from a module fixture and add to :data:`TALLY`;
every input they hand to MedDenoise is checked by :func:`unchanged`, which counts the inputs and any that changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Tally:
    bad_inputs: int = 0  # generated arrays and arguments given to the engine
    corrupted_files: int = 0  # damaged, mislabelled or unreachable files given to the readers and writers
    faults: int = 0  # signals, kills, hostile bundles
    no_harm: int = 0  # noisy scans a switched-on feature (--adapt) must not make worse
    inputs_checked: int = 0
    inputs_changed: int = 0


TALLY = Tally()


def fingerprint(item: np.ndarray | Path) -> str:
    """sha256 of an array's bytes (with its dtype and shape), a file's bytes, or a folder's files."""
    digest = hashlib.sha256()
    if isinstance(item, np.ndarray):
        digest.update(f"{item.dtype.str}{item.shape}".encode())
        digest.update(np.ascontiguousarray(item).tobytes())
    elif item.is_dir():
        for path in sorted(item.rglob("*")):
            if path.is_file():
                digest.update(path.name.encode() + path.read_bytes())
    else:
        digest.update(item.read_bytes())
    return digest.hexdigest()


def unchanged(item: np.ndarray | Path, before: str) -> bool:
    """Count one checked input; ``True`` when its fingerprint still equals ``before``."""
    TALLY.inputs_checked += 1
    same = fingerprint(item) == before
    TALLY.inputs_changed += not same
    return same


def report_at_end(config) -> None:
    """Register this module as a pytest plugin (once), so its summary hook prints the tally after the run."""
    plugin = sys.modules[__name__]
    if not config.pluginmanager.is_registered(plugin):
        config.pluginmanager.register(plugin, "reliability_tally")


def pytest_terminal_summary(terminalreporter) -> None:
    if not TALLY.inputs_checked and not TALLY.faults and not TALLY.no_harm:
        return
    failures = sum("test_reliability" in report.nodeid for report in terminalreporter.stats.get("failed", []))
    terminalreporter.write_line(
        f"reliability: {TALLY.bad_inputs} generated bad-input cases, {TALLY.corrupted_files} corrupted files, "
        f"{TALLY.faults} faults injected, {TALLY.no_harm} do-no-harm scans; {failures} failures, {TALLY.inputs_changed} of {TALLY.inputs_checked} "
        "inputs changed"
    )
