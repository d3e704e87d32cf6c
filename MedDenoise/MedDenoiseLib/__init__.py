"""Slicer-independent parts of the MedDenoise module: bundle lookup and validation, the temporary-file round trip and
the worker process. Nothing here imports ``slicer``, ``qt``, torch or MONAI, so the module loads instantly and the
whole package is tested with plain pytest."""

from .bundle import ModelInfo, find_shipped_bundle, read_model_info
from .dependencies import requirements, unmet
from .errors import JobCancelledError, ModuleError, WorkerFailedError
from .job import WorkerJob, worker_command
from .volume_file import read_volume_file, write_volume_file

__all__ = [
    "JobCancelledError",
    "ModelInfo",
    "ModuleError",
    "WorkerFailedError",
    "WorkerJob",
    "find_shipped_bundle",
    "read_model_info",
    "read_volume_file",
    "requirements",
    "unmet",
    "worker_command",
    "write_volume_file",
]
