"""Grep the product's Python (the bundle's package, the tools in ``scripts/``, the Slicer module) for a pattern: the
checks that an idea has one implementation. Comments are not searched."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRODUCT = (ROOT / "bundle" / "scripts", ROOT / "scripts", ROOT / "MedDenoise")


def product_lines(pattern: re.Pattern, allowed: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``path:line: text`` of every product line outside the files ``allowed`` (repository-relative) that matches."""
    found = []
    for folder in PRODUCT:
        for path in sorted(folder.rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in allowed:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line.split("#", 1)[0]):
                    found.append(f"{relative}:{number}: {line.strip()}")
    return found
