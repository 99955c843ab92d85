"""Who a process is (PID, host, start time) and whether it still runs: for locks and run recovery.

A PID alone is not an identity: PIDs are reused. The start time (``/proc/<pid>/stat`` field 22, in
clock ticks since boot) tells a reused PID from the process that took a lock or started a run.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path


def _start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after its closing one
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessId:
    """A process on a host, as recorded in lock files and in run tags."""

    pid: int
    host: str
    started: int | None = None  # clock ticks since boot; None where /proc is not available

    @classmethod
    def current(cls) -> ProcessId:
        return cls(os.getpid(), socket.gethostname(), _start_ticks(os.getpid()))

    @classmethod
    def from_dict(cls, values: dict) -> ProcessId:
        started = values.get("started")
        return cls(int(values["pid"]), str(values["host"]), None if started in (None, "") else int(started))

    def to_dict(self) -> dict:
        return asdict(self)

    def as_tags(self, prefix: str) -> dict[str, str]:
        """``{prefix}pid``, ``{prefix}host``, ``{prefix}started`` as strings (MLflow and Dagster tags)."""
        return {f"{prefix}{k}": "" if v is None else str(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str], prefix: str) -> ProcessId | None:
        if f"{prefix}pid" not in tags or f"{prefix}host" not in tags:
            return None
        try:
            return cls.from_dict({k: tags.get(f"{prefix}{k}") for k in ("pid", "host", "started")})
        except (TypeError, ValueError):
            return None

    @property
    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_alive(self) -> bool | None:
        """True or False for a process on this host; None when it lives elsewhere (cannot be checked)."""
        if not self.on_this_host:
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, owned by someone else
        if self.started is not None:
            now = _start_ticks(self.pid)
            if now is not None and now != self.started:
                return False  # the PID was reused by another process
        return True

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"
