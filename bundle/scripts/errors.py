"""Exception types of MedDenoise.

Every error a user can cause (bad file, bad spec, bad bundle, bad array) is raised as one of these, with a message that
names the problem and says what to do. Code that calls MedDenoise catches :class:`MedDenoiseError`.
"""


class MedDenoiseError(Exception):
    """Base class of every error MedDenoise raises on purpose."""


class NoiseSpecError(MedDenoiseError, ValueError):
    """A noise spec string or noise parameter is malformed."""


class ImageReadError(MedDenoiseError, OSError):
    """An image file or folder cannot be read as a medical image."""


class ImageWriteError(MedDenoiseError, OSError):
    """An output image cannot be written."""


class InvalidImageError(MedDenoiseError, ValueError):
    """An image was read but its content cannot be denoised (4D, colour, complex, NaN/Inf, empty)."""


class BundleError(MedDenoiseError, ValueError):
    """A bundle is missing, malformed, untrusted or does not match its metadata."""


class CancelledError(MedDenoiseError):
    """The user cancelled a running job; nothing was written."""
