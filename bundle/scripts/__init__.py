"""MedDenoise bundle package: noise models, the denoising autoencoder, data lists, inference and evaluation.

The bundle's configs import it with ``$import scripts`` (MONAI Model Zoo convention); tools outside the bundle put the
bundle folder on ``sys.path`` first. The bundle's version lives in ``configs/metadata.json`` only.
"""
