"""Bundle release archives: metadata validation, Model-Zoo-style zips, and safe extraction of a zip for loading.

>>> validate_metadata(BUNDLE_ROOT / "configs" / "metadata.json")    # raises BundleError naming every broken rule
>>> zip_path = pack_bundle(BUNDLE_ROOT, "dist", "multimodal_denoising")  # dist/meddenoise_multimodal_denoising_v0.7.0.zip
>>> bundle_dir = extract_bundle(zip_path)                            # a checked copy in the user's cache folder

A release zip holds one top-level folder (the bundle's name) with ``LICENSE``, ``large_files.yml``, ``configs/``,
``docs/``, ``scripts/`` and the weight files that ``large_files.yml`` lists — never caches, runs, evaluation outputs or
data. Its ``large_files.yml`` carries the sha256 of every packed weight file, checked again on extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .atomic import atomic_file, atomic_folder, write_atomic
from .errors import BundleError

BUNDLE_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_FILE = BUNDLE_ROOT / "docs" / "metadata_schema.json"
#: What a release holds besides the weight files: top-level files and whole folders of the bundle.
RELEASE_FILES = ("LICENSE", "large_files.yml", "docs/README.md")
RELEASE_FOLDERS = ("configs", "docs", "scripts")
_SKIPPED = ("__pycache__", ".pytest_cache", ".ipynb_checkpoints")
#: Extraction limits: a bundle is a few configs, scripts and weight files, so anything far larger is refused.
MAX_MEMBERS = 2000
MAX_UNPACKED_BYTES = 4 << 30
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed timestamps make the same bundle give the same zip


def read_config(path: str | os.PathLike) -> Any:
    """A bundle's JSON or YAML file as plain data (``yaml.safe_load``: JSON is YAML, nothing evaluated).

    Raises:
        BundleError: for an unreadable file, text that is not UTF-8, invalid syntax, or nesting too deep to parse.
    """
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as error:
        raise BundleError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise BundleError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if path.suffix == ".json" else "YAML/JSON"
        raise BundleError(f"{path}: not valid {kind} ({_one_line(error)})") from None
    except RecursionError:
        raise BundleError(f"{path}: nested too deeply to be a bundle configuration") from None


def _one_line(error: Exception) -> str:
    """An error message on one line, at most 300 characters (YAML errors quote the offending lines)."""
    return " ".join(str(error).split())[:300]


def validate_metadata(metadata: dict | str | os.PathLike, schema_file: str | os.PathLike = SCHEMA_FILE) -> dict:
    """Check a bundle's metadata against our schema (the zoo's required keys and this bundle's network format) and
    that its ``changelog`` has an entry for its ``version``; returns the metadata.

    Raises:
        BundleError: listing every violation with its location in the metadata.
    """
    import jsonschema

    if not isinstance(metadata, dict):
        metadata = read_config(metadata)
        if not isinstance(metadata, dict):
            raise BundleError("metadata.json: expected a JSON object with the bundle's metadata")
    schema = json.loads(Path(schema_file).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'/'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
        for error in sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if isinstance(metadata.get("changelog"), dict) and metadata.get("version") not in metadata["changelog"]:
        problems.append(f"changelog: has no entry for the current version {metadata.get('version')!r}")
    if problems:
        raise BundleError("metadata does not follow the bundle schema; fix:\n  " + "\n  ".join(problems))
    return metadata


def file_hash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file (``algorithm``: any :mod:`hashlib` name; the zoo uses ``md5`` or ``sha256``)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def large_files(bundle_dir: str | os.PathLike) -> list[dict]:
    """The entries of a bundle's ``large_files.yml`` (``path``, and ``url``/``hash_val``/``hash_type`` when known)."""
    path = Path(bundle_dir) / "large_files.yml"
    if not path.is_file():
        return []
    content = read_config(path) or {}
    entries = content.get("large_files", []) if isinstance(content, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "path" in e for e in entries):
        raise BundleError(f"{path}: expected 'large_files:' followed by a list of entries with a 'path'")
    return entries


#: The only hash accepted for weight files: md5 collisions are cheap to make.
HASH_TYPE = "sha256"


def verify_weights(bundle_dir: str | os.PathLike, relative: str) -> None:
    """Check a weight file against the sha256 that the bundle's ``large_files.yml`` records for it: every weight file
    the engine loads, from a folder or a zip alike, must be listed there with ``hash_type: sha256`` and a
    ``hash_val`` that matches (:func:`record_hashes` writes them after training).

    Raises:
        BundleError: the file is not listed, has no hash, another hash type, or a different sha256.
    """
    bundle_dir = Path(bundle_dir)
    entries = [entry for entry in large_files(bundle_dir) if entry["path"] == relative]
    record = f"record it with: python scripts/package_bundle.py {bundle_dir} --record_hashes"
    if not entries or not entries[0].get("hash_val"):
        where = "has no hash_val in" if entries else "is not listed in"
        raise BundleError(
            f"{bundle_dir / relative}: {where} the bundle's large_files.yml, so nothing shows the file is the one "
            f"published; if you trained it yourself, {record}"
        )
    entry = entries[0]
    if str(entry.get("hash_type", "")).lower() != HASH_TYPE:
        raise BundleError(
            f"{bundle_dir / relative}: large_files.yml gives its hash as {entry.get('hash_type')!r}; only {HASH_TYPE} "
            f"is accepted for weights; {record}"
        )
    if file_hash(bundle_dir / relative) != str(entry["hash_val"]).lower():
        raise BundleError(
            f"{bundle_dir / relative}: does not match the sha256 in large_files.yml; the file is corrupt or was "
            "altered: get the bundle again from its publisher"
        )


def shipped_hashes(relative: str) -> set[str]:
    """The sha256 values the shipped bundle's ``large_files.yml`` records for ``relative`` (e.g. ``models/model.ts``)."""
    return {
        str(entry["hash_val"]).lower()
        for entry in large_files(BUNDLE_ROOT)
        if entry["path"] == relative and entry.get("hash_val") and entry.get("hash_type") == HASH_TYPE
    }


def record_hashes(bundle_dir: str | os.PathLike) -> list[dict]:
    """Write the sha256 of every weight file present into the bundle folder's ``large_files.yml`` (after training or
    exporting); entries of absent files are kept as they are. Returns the entries."""
    bundle_dir = Path(bundle_dir)
    entries = large_files(bundle_dir) or [{"path": "models/model.pt"}, {"path": "models/model.ts"}]
    for entry in entries:
        if (bundle_dir / entry["path"]).is_file():
            entry.update(hash_type=HASH_TYPE, hash_val=file_hash(bundle_dir / entry["path"]))
    path = bundle_dir / "large_files.yml"
    comments = [line for line in path.read_text().splitlines(True) if line.startswith("#")] if path.is_file() else []
    text = "".join(comments) + yaml.safe_dump({"large_files": entries}, sort_keys=False)
    write_atomic(path, lambda partial: partial.write_text(text))
    return entries


def release_name(name: str, version: str) -> str:
    """``meddenoise_<name>_v<version>``: the zip's stem; its top-level folder is ``meddenoise_<name>``."""
    return f"meddenoise_{name}_v{version}"


def pack_bundle(
    bundle_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    name: str,
    include_weights: bool = True,
    weights_url: str | None = None,
) -> Path:
    """Write ``output_dir/meddenoise_<name>_v<version>.zip`` the way the Model Zoo releases bundles (atomically).

    Args:
        bundle_dir: the bundle folder (its metadata is validated first).
        output_dir: where the zip goes (created if needed).
        name: the bundle's zoo name, task + data type, e.g. ``multimodal_denoising`` (letters, digits, ``_``).
        include_weights: pack the weight files listed in ``large_files.yml``; ``False`` leaves them out, so users
            fetch them from their ``url`` (``python -m monai.bundle download`` style) and the hash checks them.
        weights_url: base URL the weight files are published under; ``<weights_url>/<file name>`` becomes each
            entry's ``url`` (required when the weights are left out and ``large_files.yml`` has no url).
    """
    bundle_dir = Path(bundle_dir)
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise BundleError(f"bundle name {name!r}: use letters, digits and '_' only, e.g. multimodal_denoising")
    metadata = validate_metadata(bundle_dir / "configs" / "metadata.json")
    top = f"meddenoise_{name}"
    members: dict[str, Path | bytes] = {}
    for file_name in RELEASE_FILES:
        if not (bundle_dir / file_name).is_file():
            raise BundleError(f"{bundle_dir / file_name}: missing; a zoo bundle needs it")
        members[file_name] = bundle_dir / file_name
    for folder in RELEASE_FOLDERS:
        for path in sorted((bundle_dir / folder).rglob("*")):
            relative = path.relative_to(bundle_dir)
            hidden = any(part.startswith(".") or part in _SKIPPED for part in relative.parts)
            if path.is_file() and not path.is_symlink() and not hidden and path.suffix != ".pyc":
                members[relative.as_posix()] = path
    entries = []
    for entry in large_files(bundle_dir):
        entry = {**entry, "hash_type": "sha256"}
        weights = bundle_dir / entry["path"]
        if weights_url:
            entry["url"] = f"{weights_url.rstrip('/')}/{PurePosixPath(entry['path']).name}"
        if weights.is_file():
            entry["hash_val"] = file_hash(weights)
            if include_weights:
                members[entry["path"]] = weights
        elif not entry.get("hash_val"):
            continue  # an optional file this bundle does not have (e.g. no TorchScript export yet)
        if not include_weights and not entry.get("url"):
            raise BundleError(f"{entry['path']} is left out of the zip but has no url; pass weights_url")
        entries.append(entry)
    if not any(PurePosixPath(entry["path"]).suffix == ".pt" for entry in entries):
        raise BundleError(f"{bundle_dir}: no weights (models/model.pt) to pack; train the bundle first")
    members["large_files.yml"] = yaml.safe_dump({"large_files": entries}, sort_keys=False).encode()

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / f"{release_name(name, metadata['version'])}.zip"
    with atomic_file(target) as partial, zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member, source in sorted(members.items()):
            info = zipfile.ZipInfo(f"{top}/{member}", date_time=_ZIP_TIME)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, source if isinstance(source, bytes) else source.read_bytes())
    return target


def check_members(archive: zipfile.ZipFile, max_members: int = MAX_MEMBERS, max_bytes: int = MAX_UNPACKED_BYTES) -> str:
    """Refuse anything a bundle zip has no reason to hold; returns the bundle's folder inside the zip: the single
    top-level folder (zoo releases), or ``""`` when ``configs/metadata.json`` sits at the top (a zipped folder's content).

    Refused: absolute paths, drive letters, backslashes, ``..`` components, symbolic links and other special files,
    a path given twice or as both a file and a folder, encrypted entries, compression other than stored/deflate,
    more than one top-level folder, more than ``max_members`` entries or ``max_bytes`` unpacked.
    """
    infos = archive.infolist()
    if len(infos) > max_members:
        raise BundleError(f"{archive.filename}: {len(infos)} entries (limit {max_members}); this is not a bundle zip")
    total = sum(info.file_size for info in infos)
    if total > max_bytes:
        raise BundleError(f"{archive.filename}: unpacks to {total} bytes (limit {max_bytes}); refusing to extract")
    tops, files, folders = set(), set(), set()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if name.startswith("/") or "\\" in name or ":" in name or ".." in parts or not parts:
            raise BundleError(f"{archive.filename}: unsafe entry {name!r} (absolute path or '..'); refusing to extract")
        if stat.S_IFMT(info.external_attr >> 16) not in (0, stat.S_IFREG, stat.S_IFDIR):  # 0: no Unix mode stored
            raise BundleError(f"{archive.filename}: entry {name!r} is a symbolic link or special file; refusing")
        if info.flag_bits & 0x1:
            raise BundleError(f"{archive.filename}: entry {name!r} is encrypted; a bundle zip is never encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise BundleError(
                f"{archive.filename}: entry {name!r} uses compression method {info.compress_type}; bundle zips are "
                "stored or deflated: build it with scripts/package_bundle.py"
            )
        path = PurePosixPath(*parts)
        if path in files or (not info.is_dir() and path in folders):
            raise BundleError(f"{archive.filename}: {name!r} appears twice or as both a file and a folder; refusing")
        (folders if info.is_dir() else files).add(path)
        folders.update(path.parents)
        tops.add(parts[0])
    if files & folders:
        clash = sorted(map(str, files & folders))[0]
        raise BundleError(f"{archive.filename}: {clash!r} is both a file and a folder in the zip; refusing to extract")
    if "configs/metadata.json" in archive.namelist():
        return ""
    if len(tops) != 1 or not any(PurePosixPath(i.filename).parts[1:] for i in infos):
        raise BundleError(
            f"{archive.filename}: expected one top-level bundle folder, found {sorted(tops)}; "
            "build release zips with scripts/package_bundle.py"
        )
    return tops.pop()


def cache_root() -> Path:
    """Where extracted bundles are kept: ``$XDG_CACHE_HOME/meddenoise/bundles`` (default ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "meddenoise" / "bundles"


def extract_bundle(zip_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Safely extract a bundle zip and return its bundle folder; the zip itself is never modified.

    The folder is ``<cache_dir>/<sha256 of the zip>/<top-level folder>``, so the same zip is extracted once and a
    changed zip never reuses a stale copy. Extraction goes to a temporary folder that is renamed into place when
    complete (:func:`scripts.atomic.atomic_folder`: one left by a killed process is removed by the next extraction);
    weight files are checked against the hashes in the zip's ``large_files.yml``.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise BundleError(f"{zip_path}: no such bundle zip")
    if not zipfile.is_zipfile(zip_path):
        raise BundleError(f"{zip_path}: not a zip file; give a bundle folder or a release zip")
    destination = Path(cache_dir) if cache_dir else cache_root()
    destination = destination / file_hash(zip_path)[:32]
    with zipfile.ZipFile(zip_path) as archive:
        top = check_members(archive)
        if (destination / top / "configs" / "metadata.json").is_file():
            return destination / top
        try:
            with atomic_folder(destination, keep_existing=True) as staging:  # another process's copy is identical
                for info in archive.infolist():
                    target = staging.joinpath(*PurePosixPath(info.filename).parts)
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(info) as source, open(target, "wb") as sink:  # the CRC is checked on read
                        shutil.copyfileobj(source, sink)
                _check_hashes(staging / top, zip_path)
        except zipfile.BadZipFile as error:
            raise BundleError(f"{zip_path}: the zip is damaged ({error}); download or build it again") from None
        except OSError as error:
            raise BundleError(
                f"{zip_path}: cannot be extracted into {destination.parent} ({error.strerror or error}); free space "
                "there or set XDG_CACHE_HOME to a writable folder"
            ) from None
    return destination / top


def _check_hashes(bundle_dir: Path, zip_path: Path) -> None:
    for entry in large_files(bundle_dir):
        path = bundle_dir / entry["path"]
        expected = entry.get("hash_val")
        if path.is_file() and expected:
            algorithm = str(entry.get("hash_type", "sha256")).lower()
            if algorithm not in hashlib.algorithms_available or file_hash(path, algorithm) != expected:
                raise BundleError(
                    f"{zip_path}: {entry['path']} does not match the {algorithm} hash in large_files.yml; "
                    "the zip is corrupt or was altered, download or build it again"
                )
