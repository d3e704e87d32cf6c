"""The one atomic writer (``scripts.atomic``): whole results or none, nothing left behind, one file mode policy, and no
other temp-and-rename anywhere in the product."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ctrl_c_on
from product_grep import product_lines

from scripts.atomic import atomic_file, atomic_folder, write_atomic

BUNDLE = Path(__file__).resolve().parent.parent / "bundle"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_file_appears_whole_with_a_normal_mode_and_its_extension_kept(tmp_path):
    target = tmp_path / "ct.nii.gz"
    with atomic_file(target) as partial:
        assert partial.parent == tmp_path and partial.name.endswith(".partial.nii.gz")  # writers pick format by it
        partial.write_bytes(b"new")
        assert not target.exists()  # nothing under the name until the write has finished
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()  # as open() makes it, not mkstemp's private 0o600
    assert sorted(tmp_path.iterdir()) == [target]


def test_folder_replaces_an_existing_one_whole(tmp_path):
    target = tmp_path / "series"
    target.mkdir()
    (target / "old.dcm").write_text("old")
    with atomic_folder(target) as staging:
        (staging / "new.dcm").write_text("new")
        assert [p.name for p in target.iterdir()] == ["old.dcm"]
    assert [p.name for p in target.iterdir()] == ["new.dcm"]
    assert target.stat().st_mode & 0o777 == 0o777 & ~_umask()
    assert sorted(tmp_path.iterdir()) == [target]  # the old folder moved aside is gone too


def test_keep_existing_keeps_what_another_process_wrote_meanwhile(tmp_path):
    target = tmp_path / "cache"
    with atomic_folder(target, keep_existing=True) as staging:
        (staging / "ours").write_text("ours")
        target.mkdir()
        (target / "theirs").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs"]
    assert sorted(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt(), SystemExit(1)])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_write_that_raises_leaves_the_target_as_it_was_and_nothing_else(tmp_path, kind, error):
    target = tmp_path / ("out.png" if kind == "file" else "series")
    if kind == "file":
        target.write_text("old")
    else:
        target.mkdir()
        (target / "a.dcm").write_text("old")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(type(error)), atomic_file(target) if kind == "file" else atomic_folder(target) as staging:
        (staging if kind == "file" else staging / "b.dcm").write_text("half")
        raise error
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (target if kind == "file" else target / "a.dcm").read_text() == "old"


def test_write_atomic_returns_the_target_and_refuses_a_folder_in_the_way(tmp_path):
    assert write_atomic(tmp_path / "sub" / "r.json", lambda p: p.write_text("{}")) == tmp_path / "sub" / "r.json"
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        write_atomic(tmp_path / "taken", lambda p: p.write_text("x"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "taken"] and not any((tmp_path / "taken").iterdir())


_SLOW_WRITER = """
import sys, time
sys.path.insert(0, {bundle!r})
from scripts.atomic import atomic_file
with atomic_file({target!r}) as partial:
    with open(partial, "wb") as sink:
        while True:
            sink.write(b"x" * 4096)
            sink.flush()
            print("writing", flush=True)
            time.sleep(0.05)
"""


def _start_slow_writer(target: Path) -> subprocess.Popen:
    code = _SLOW_WRITER.format(bundle=str(BUNDLE), target=str(target))
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, preexec_fn=ctrl_c_on)
    assert process.stdout.readline().strip() == "writing"  # the temporary exists and is being written
    return process


def test_ctrl_c_mid_write_leaves_nothing(tmp_path):
    target = tmp_path / "out.nrrd"
    process = _start_slow_writer(target)
    assert any(tmp_path.iterdir())
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) != 0
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.nrrd"
    process = _start_slow_writer(target)
    process.kill()  # SIGKILL: no cleanup can run
    process.wait(timeout=60)
    (left,) = tmp_path.iterdir()
    assert left.name.startswith(f".{target.name}.") and f"-{process.pid}." in left.name
    time.sleep(0.1)
    write_atomic(target, lambda p: p.write_text("done"))
    assert list(tmp_path.iterdir()) == [target] and target.read_text() == "done"


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    target = tmp_path / "out.nrrd"
    process = _start_slow_writer(target)
    try:
        write_atomic(target, lambda p: p.write_text("done"))
        assert len(list(tmp_path.iterdir())) == 2  # the target and the other process's temporary
    finally:
        process.kill()
        process.wait(timeout=60)


#: What a temp-and-rename needs: a rename, or a temporary file kept after it is closed.
_TEMP_AND_RENAME = re.compile(
    r"\bos\.(replace|rename|renames)\(|\.rename\(|shutil\.move\(|\bmkstemp\(|NamedTemporaryFile\(|\.replace\([\w.]+\)"
)


def test_no_other_temp_and_rename_in_the_product():
    """``grep -rnE 'os\\.(replace|rename)|\\.rename\\(|shutil\\.move|mkstemp|NamedTemporaryFile'`` over the product
    finds only ``scripts/atomic.py``: every writer goes through it."""
    found = product_lines(_TEMP_AND_RENAME, {"bundle/scripts/atomic.py"})
    assert not found, "write through scripts.atomic instead:\n" + "\n".join(found)
    assert _TEMP_AND_RENAME.search("os.replace(partial, path)") and _TEMP_AND_RENAME.search("staging.rename(target)")
