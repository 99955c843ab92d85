"""One writer per data directory: the lock names its owner, refuses a second writer, breaks stale locks."""

import json
import os
import subprocess
import sys

import pytest

from loc2vec.lock import LOCK_NAME, DataDirBusy, DataDirLock
from loc2vec.process import ProcessId


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_the_lock_records_its_owner_and_is_released(tmp_path):
    with DataDirLock(tmp_path, command="loc2vec run") as lock:
        values = json.loads((tmp_path / LOCK_NAME).read_text())
        assert values["pid"] == os.getpid() and values["command"] == "loc2vec run"
        assert ProcessId.from_dict(values) == lock.owner
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from loc2vec.lock import DataDirLock; import time; DataDirLock({str(tmp_path)!r}, "
            "command='holder').acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirBusy, match=rf"in use by pid {holder.pid} on .*\(holder\)"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    messages = []
    with DataDirLock(tmp_path, log=messages.append):  # the holder died: its lock is stale now
        pass
    assert messages and f"stale lock of pid {holder.pid}" in messages[0]


def test_a_stale_lock_of_a_dead_process_is_broken_with_a_message(tmp_path):
    stale = ProcessId(_dead_pid(), ProcessId.current().host, None)
    (tmp_path / LOCK_NAME).write_text(json.dumps({**stale.to_dict(), "since": "then", "command": "old"}))
    messages = []
    with DataDirLock(tmp_path, log=messages.append) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == lock.owner.pid
    assert f"broke a stale lock of pid {stale.pid}" in messages[0]


def test_a_reused_pid_counts_as_dead(tmp_path):
    me = ProcessId.current()
    assert me.is_alive() is True
    assert ProcessId(me.pid, me.host, (me.started or 0) + 1).is_alive() is False


def test_a_lock_from_another_host_is_never_broken(tmp_path):
    other = {"pid": 1, "host": "elsewhere.example", "started": 5, "since": "then", "command": "loc2vec run"}
    (tmp_path / LOCK_NAME).write_text(json.dumps(other))
    with pytest.raises(DataDirBusy, match=r"elsewhere\.example.*cannot be checked.*delete"):
        DataDirLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == other
