"""fileio.folder_lock (one process at a time in a folder) and check_relative_path."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spikefm.fileio import LOCK_NAME, check_relative_path, folder_lock

HOLD = """
import sys, time
from spikefm.fileio import folder_lock
with folder_lock(sys.argv[1], "corpus", command="holder --test"):
    print("locked", flush=True)
    time.sleep(60)
"""


def hold_lock(folder):
    """A separate process that holds the folder's lock until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_holder_fails_at_once_naming_the_first(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(ValueError) as exc:
            with folder_lock(tmp_path, "corpus"):
                pass
        assert time.monotonic() - t0 < 1.0  # non-blocking
        msg = str(exc.value)
        assert "\n" not in msg
        assert f"PID {proc.pid}" in msg and "holder --test" in msg and "corpus" in msg
        assert "in use" in msg and "wait for it to finish" in msg
        info = json.loads((tmp_path / LOCK_NAME).read_text())  # the holder's line is intact
        assert info["pid"] == proc.pid and info["command"] == "holder --test"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # kill -9 released it: the next holder gets it at once and records itself
    with folder_lock(tmp_path, "corpus") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert (tmp_path / LOCK_NAME).read_text() == ""  # emptied on release
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_lock_is_exclusive_within_one_process_and_reusable(tmp_path):
    with folder_lock(tmp_path, "training run"):
        with pytest.raises(ValueError, match=rf"training run is in use .*PID {os.getpid()}"):
            with folder_lock(tmp_path, "training run"):
                pass
    with folder_lock(tmp_path):  # released by the with block, even after the failure inside
        pass
    with pytest.raises(RuntimeError):
        with folder_lock(tmp_path):
            raise RuntimeError("boom")
    with folder_lock(tmp_path):  # released on an exception too
        pass


def test_missing_folder_is_a_one_line_value_error(tmp_path):
    with pytest.raises(ValueError, match="cannot lock the corpus") as exc:
        with folder_lock(tmp_path / "nope", "corpus"):
            pass
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("name", ["../x.parquet", "a/../../x", "/etc/passwd", "a//b", "./a",
                                  "C:/x", "a\\..\\b", "", "a/\x00b", "..", "a/."])
def test_check_relative_path_refuses_names_that_leave_the_folder(name):
    with pytest.raises(ValueError, match="not a plain relative path") as exc:
        check_relative_path(name, what="repo file name")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["data/train-00000-of-00001.parquet", "a.b/c..d/e", "x"])
def test_check_relative_path_keeps_plain_names(name):
    assert str(check_relative_path(name)) == name


def test_folder_in_use_tells_a_held_lock_without_taking_or_creating_one(tmp_path):
    from spikefm.fileio import folder_in_use

    assert not folder_in_use(tmp_path / "missing") and not folder_in_use(tmp_path)
    assert not (tmp_path / LOCK_NAME).exists()  # nothing created
    with folder_lock(tmp_path, "training run"):
        assert folder_in_use(tmp_path)
    assert not folder_in_use(tmp_path)
    with folder_lock(tmp_path, "training run"):  # the probe left no lock behind
        pass
