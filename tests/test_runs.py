"""Run folders know what made them: a rerun with other settings never reuses old state, and one folder has
one writer at a time."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from comalite.errors import RunConflictError, RunLockedError
from comalite.runs import RUN_FILE, claim, differences, make_record, run_lock

RECORD = make_record({"stage1": {"mask": True, "train.lr": 0.002}}, {"data": "abc"})


def test_differences_name_every_changed_setting():
    other = make_record({"stage1": {"mask": False, "train.lr": 0.002}}, {"data": "abd"})
    assert differences(RECORD, other) == ["fingerprint: {!r} -> {!r}".format(RECORD["fingerprint"],
                                                                              other["fingerprint"]),
                                          "inputs.data: 'abc' -> 'abd'", "settings.stage1.mask: True -> False"]


def test_claim_accepts_the_same_run_refuses_another_and_overwrites_on_request(tmp_path):
    claim(tmp_path, RECORD)
    (tmp_path / "checkpoint.pt").write_text("weights of the first run")
    claim(tmp_path, RECORD)  # the same run again: resume, nothing touched
    assert (tmp_path / "checkpoint.pt").exists()
    other = make_record({"stage1": {"mask": False, "train.lr": 0.002}}, {"data": "abc"})
    with pytest.raises(RunConflictError, match=r"settings.stage1.mask: True -> False[\s\S]*--overwrite"):
        claim(tmp_path, other)
    assert (tmp_path / "checkpoint.pt").exists()  # a refusal loses nothing
    claim(tmp_path, other, overwrite=True)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert json.loads((tmp_path / RUN_FILE).read_text()) == other


def test_a_folder_without_a_record_is_not_taken_over(tmp_path):
    (tmp_path / "result.json").write_text("{}")
    with pytest.raises(RunConflictError, match="unrecorded run"):
        claim(tmp_path, RECORD)


def test_a_second_writer_is_refused_and_a_killed_ones_lock_is_gone(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(RunLockedError, match=r"in use by process \d+"):
            with run_lock(tmp_path):
                pass
    # A process holding the lock is killed (SIGKILL): the kernel drops its lock with it.
    holder = subprocess.Popen([sys.executable, "-c", f"from comalite.runs import run_lock\nimport time\n"
                               f"with run_lock({str(tmp_path)!r}):\n    print('locked', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError):
        with run_lock(tmp_path):
            pass
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    with run_lock(tmp_path):
        pass


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    from comalite.errors import ComaliteError

    with pytest.raises(ComaliteError, match="cannot write into the run folder"):
        with run_lock(blocked / "run"):
            pass
