"""MedDenoise bundle package: noise models, the denoising autoencoder, data lists, inference and evaluation.

The bundle's configs import it with ``$import scripts`` (MONAI Model Zoo convention); tools outside the bundle put the
bundle folder on ``sys.path`` first.
"""

__version__ = "0.2.0"
