#!/usr/bin/env python
"""Average the weights of several fine-tunes of one network into one checkpoint (a "model soup").

    python scripts/average_checkpoints.py RUN_A/models/model_averaged.pt RUN_B/models/model_averaged.pt -o bundle/models/model.pt

The checkpoints must be state dicts of the same network (as the bundle's training runs save them); the result is
written atomically, so a cancelled run leaves the output as it was. Bundle 0.10.0's weights are the mean of two runs
from the same start, one with the PSNR loss and one with PSNR + SSIM (``research/experiments.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"
sys.path.insert(0, str(BUNDLE))

import torch  # noqa: E402

from scripts.atomic import write_atomic  # noqa: E402
from scripts.training import average_checkpoints  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="average_checkpoints.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="state dicts (.pt) of one network")
    parser.add_argument("-o", "--output", required=True, type=Path, help="where the averaged state dict goes")
    args = parser.parse_args(argv)
    missing = [str(path) for path in args.checkpoints if not path.is_file()]
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    if args.output.resolve() in {path.resolve() for path in args.checkpoints}:
        parser.error(f"the output {args.output} is one of the inputs; write the average to a new file")
    try:
        average = average_checkpoints(
            [torch.load(path, map_location="cpu", weights_only=True) for path in args.checkpoints]
        )
    except ValueError as error:
        parser.error(str(error))
    write_atomic(args.output, lambda path: torch.save(average, path))
    print(f"wrote the mean of {len(args.checkpoints)} checkpoints to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
