"""One writer per data directory: a lock file naming its owner (PID, host, start time, command).

The lock is created with ``O_CREAT | O_EXCL`` (atomic on local and NFS volumes). A lock whose owner is
gone (same host, process dead or its PID reused) is stale: it is broken, with a message, by moving it
aside under a unique name, so that of two processes breaking it at once only one succeeds.
A lock held from another host cannot be checked and is never broken automatically.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from loc2vec.errors import Loc2VecError
from loc2vec.process import ProcessId

LOCK_NAME = ".loc2vec.lock"


class DataDirBusy(Loc2VecError):
    """Another process is writing to the data directory."""


class DataDirLock:
    """Context manager holding ``<directory>/.loc2vec.lock`` while a pipeline writes there."""

    def __init__(self, directory: str | Path, log: Callable[[str], None] = print, command: str | None = None):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.log = log
        self.command = (
            command if command is not None else " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv))
        )
        self.owner = ProcessId.current()
        self.held = False

    def _record(self) -> str:
        return json.dumps(
            {**self.owner.to_dict(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
        )

    def _read(self) -> dict | None:
        try:
            values = json.loads(self.path.read_text())
            ProcessId.from_dict(values)
            return values
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # unreadable: a writer died between create and write, or the file was damaged

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._break_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._record())
            self.held = True
            return
        raise DataDirBusy(f"could not take the lock {self.path}: it keeps being recreated by other processes")

    def _break_if_stale(self) -> None:
        values = self._read()
        if values is None:
            return  # released meanwhile: try again
        if values == {}:
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 0.0
            if age < 10.0:  # its writer may still be writing it
                time.sleep(0.5)
                return
            reason = "an unreadable lock file"
        else:
            holder = ProcessId.from_dict(values)
            alive = holder.is_alive()
            since, command = values.get("since", "?"), values.get("command", "?")
            if alive is None:
                raise DataDirBusy(
                    f"data directory {self.directory} is locked by {holder.describe()} since {since} ({command}); "
                    f"that host cannot be checked from here: if no loc2vec run is active there, delete {self.path}"
                )
            if alive:
                raise DataDirBusy(
                    f"data directory {self.directory} is in use by {holder.describe()} since {since} ({command}): "
                    "wait for it to finish, or give this run another data directory"
                )
            reason = f"a stale lock of {holder.describe()} (since {since}), whose process is gone"
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another process broke it first
        aside.unlink(missing_ok=True)
        self.log(f"broke {reason}: {self.path}")

    def release(self) -> None:
        if not self.held:
            return
        values = self._read()
        if values and ProcessId.from_dict(values) == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
