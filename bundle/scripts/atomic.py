"""Atomic writes: a result appears whole under its name, or not at all.

Every file and folder the product writes (images, DICOM series, reports, checkpoints, release zips, extracted bundles)
is written here: into a hidden temporary beside the target (same folder, so the rename stays on one file system and
is atomic), renamed over the target only when the write has finished. On any exception, ``KeyboardInterrupt`` and
``SystemExit`` included, the temporary is removed and the target is left as it was. A process killed outright
(``SIGKILL``, power loss) cannot clean up; its temporary carries this machine's name and the process id
(``.<name>.<host>-<pid>.<random>.partial``), and the next write of the same target removes it once that process is
gone.

Modes: a file gets ``0o666`` and a folder ``0o777`` less the umask, as ``open()`` and ``mkdir()`` give them
(``mkstemp``/``mkdtemp`` would make them private to the owner).

>>> with atomic_file("out/ct.nii.gz") as partial:   # partial: out/.ct.nii.gz.<host>-<pid>.<random>.partial.nii.gz
...     nib.save(image, partial)
>>> with atomic_folder("out/series") as staging:    # a whole folder, e.g. a DICOM series
...     for name, instance in instances: pydicom.dcmwrite(staging / name, instance)
>>> write_atomic("results.json", lambda path: path.write_text(text))
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_file", "atomic_folder", "write_atomic"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` that ends like it (``.nii.gz``, ``.png``: writers choose the format by
    the extension); when the block ends normally the finished file is renamed over ``path``, on any exception it is
    removed. The folder is created if missing."""
    path = Path(path)
    with _staged(path, folder=False) as partial:
        yield partial


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; when the block ends normally it becomes ``path``.

    An existing ``path`` is replaced: it is first moved aside (and back if the rename fails), so ``path`` is always
    either the old or the new folder. With ``keep_existing`` a ``path`` that exists by then is kept and the new
    folder discarded: for content-addressed caches, where another process may have written the same content meanwhile.
    """
    path = Path(path)
    with _staged(path, folder=True, keep_existing=keep_existing) as staging:
        yield staging


def write_atomic(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` (e.g. ``lambda p: torch.save(state, p)``) in :func:`atomic_file`; returns
    ``path``."""
    with atomic_file(path) as partial:
        write(partial)
    return Path(path)


@contextlib.contextmanager
def _staged(target: Path, folder: bool, keep_existing: bool = False) -> Iterator[Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(target)
    prefix, suffix = f".{target.name}.{_owner()}{os.getpid()}.", f".partial{_ending(target)}"
    if folder:
        staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=target.parent))
    else:
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
        os.close(handle)
        staging = Path(name)
    try:
        os.chmod(staging, (0o777 if folder else 0o666) & ~_umask())
        yield staging
        _move_into_place(staging, target, keep_existing)
    finally:
        _remove(staging)


def _move_into_place(staging: Path, target: Path, keep_existing: bool) -> None:
    if not staging.is_dir() or not target.exists():
        try:
            os.replace(staging, target)
        except OSError:  # a folder that appeared meanwhile (rename does not replace a non-empty one)
            if not (keep_existing and target.is_dir()):
                raise
        return
    if keep_existing:
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.{_owner()}{os.getpid()}.", suffix=".old", dir=target.parent))
    os.replace(target, aside / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside / target.name, target)
        raise
    finally:
        _remove(aside)


def _ending(path: Path) -> str:
    """``.nii.gz`` for ``ct.nii.gz``, else the last suffix (``v0.10.0.zip``: ``.zip``)."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix


def _owner() -> str:
    return f"{socket.gethostname().replace('.', '_')}-"


def _remove_dead_temporaries(target: Path) -> None:
    """Remove the temporaries of ``target`` that a killed process of this machine left; those of live processes and
    of other machines (a shared folder) are left alone."""
    marker = f".{target.name}.{_owner()}"
    for leftover in target.parent.glob(f"{glob.escape(marker)}*"):
        pid = leftover.name[len(marker) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(leftover)


def _alive(pid: int) -> bool:
    if os.name != "posix":  # Windows' os.kill(pid, 0) sends CTRL_C_EVENT rather than probing: treat all as alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
