#!/usr/bin/env bash
# Set up (first run only) and run the demo: real CT/MR/X-ray images from pip packages, noised, denoised, pictures.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
.venv/bin/python scripts/demo.py "$@"
