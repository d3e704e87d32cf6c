"""Errors the module shows to the user as they are: each message names the problem and says what to do.

The bundle's own ``scripts.errors`` live in the worker process; the Slicer process never imports the bundle package
(its name, ``scripts``, is too generic to put on Slicer's ``sys.path``), so the worker's messages arrive as text and
are raised here as :class:`WorkerFailedError`.
"""


class ModuleError(Exception):
    """A problem the user can fix (wrong volume, missing model, refused install, ...)."""


class WorkerFailedError(ModuleError):
    """The worker process reported an error or crashed; the message is the worker's own or its last output lines."""


class JobCancelledError(ModuleError):
    """The user cancelled a run; nothing was written to the scene."""
