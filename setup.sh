#!/usr/bin/env bash
# Creates .venv beside this file and installs everything MedDenoise needs (idempotent: a second run installs nothing).
# torch is pinned to 2.13.0 in requirements.txt: an unpinned torch would pull the newest CUDA build (several GB).
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
