"""The MONAI Model Zoo's own checks, run offline on the bundle folder and on its release zip.

What the zoo's premerge runs (``ci/verify_bundle.py``, ``ci/unit_tests``, ``runtests.sh --codeformat`` and its
pre-commit hooks), with MONAI's and the zoo's real tools: ``monai.bundle.verify_metadata`` against the schema that
``metadata.json`` names (``docs/`` holds it, so nothing is downloaded), the required and preferred files, the
``large_files.yml`` entries ``download_url`` takes, ``verify_net_in_out``, ``ckpt_export`` and the TorchScript's
embedded metadata, ``check_properties`` of the inference, train and evaluate workflows, flake8 with the zoo's plugins,
black with its arguments, and the pre-commit hooks that would rewrite a submission's files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import BUNDLE, ROOT

BIN = Path(sys.executable).parent


def run_tool(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True)


def test_flake8_with_the_zoo_plugins_passes():
    result = run_tool("flake8", "--config", str(ROOT / "tests" / "zoo_ci" / "setup.cfg"), "scripts", cwd=BUNDLE)
    assert result.returncode == 0, result.stdout + result.stderr
    plugins = run_tool("flake8", "--version", cwd=BUNDLE).stdout
    for plugin in ("flake8-bugbear", "pep8-naming", "flake8-comprehensions", "flake8-executable"):
        assert plugin in plugins, f"{plugin} is not installed, so flake8 would not run its checks"


def test_black_with_the_zoo_arguments_passes():
    zoo_black = (
        "black",
        "--skip-magic-trailing-comma",
        "--line-length",
        "120",
        "-t",
        "py37",
        "-t",
        "py38",
        "-t",
        "py39",
    )
    result = run_tool(*zoo_black, "--check", "--diff", "scripts", cwd=BUNDLE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_flake8_and_black_would_catch_a_violation(tmp_path):
    """The two checks above can fail: the zoo's settings flag what the project's ruff lets through."""
    (tmp_path / "scripts").mkdir()
    source = 'import SimpleITK as sitk\n\n\ndef f(x=len("ab")):\n    return [\n        x,\n    ]\n'
    (tmp_path / "scripts" / "bad.py").write_text(source)
    flake8 = run_tool("flake8", "--config", str(ROOT / "tests" / "zoo_ci" / "setup.cfg"), "scripts", cwd=tmp_path)
    assert "N813" in flake8.stdout and "B008" in flake8.stdout
    black = run_tool("black", "--skip-magic-trailing-comma", "-l", "120", "--check", "scripts", cwd=tmp_path)
    assert black.returncode == 1


def test_ruff_format_agrees_with_black():
    """bundle/ruff.toml gives ruff format black's trailing-comma rule, so the project's formatter keeps black happy."""
    result = subprocess.run(
        [str(BIN / "ruff"), "format", "--check", "bundle"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
