"""Self-supervised objectives that lost to the shipped ones, kept so their experiments can be rerun.

Nothing here ships: the Model Zoo zip and the Slicer extension hold ``bundle/`` only. One objective per module, each a
MONAI transform (or network) that a config in ``research/configs/`` layers on the bundle's
``train.yaml`` + ``train_selfsupervised.yaml``; how to rerun each experiment: ``research/README.md``.

Importing the package puts the bundle root on ``sys.path``, so these modules build on the bundle's ``scripts``
package (its masking, losses and data path) exactly as the shipped self-supervised model does.
"""

from __future__ import annotations

import sys
from pathlib import Path

BUNDLE_ROOT = Path(__file__).resolve().parent.parent / "bundle"
if str(BUNDLE_ROOT) not in sys.path:
    sys.path.insert(0, str(BUNDLE_ROOT))
