"""Finding and killing every process of one Flower installation, and nothing else.

Flower's SuperExec starts the ServerApp and the simulation in new sessions, and Ray
starts its own daemons, so killing a SuperLink's process group does not reach them. Each
of them inherits the launcher's `FLWR_HOME`, though, which identifies exactly the
processes of one launcher (a test's or a run's) without touching anyone else's.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def processes_with_env(key: str, value: str) -> list[int]:
    """PIDs (other than ours) whose environment has `key=value` (Linux /proc)."""
    wanted = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_processes_with_env(key: str, value: str, sig: int = signal.SIGKILL, wait: float = 10.0) -> list[int]:
    """Send `sig` to every process carrying `key=value`; returns the PIDs signalled."""
    pids = processes_with_env(key, value)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"  # a zombie is dead, awaiting its parent
    except OSError:
        return False
