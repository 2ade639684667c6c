"""Flower processes a stopped or killed site daemon left behind, ended by PID before the site starts again.

Why: `flower-supernode` runs each job's ClientApp (and its SuperExec) as child processes. When the daemon is
SIGKILLed (or stopped while a ClientApp hangs, e.g. after `flwr stop`), those children are orphaned and keep
running for minutes, still writing into the daemon's log file, which the next daemon appends to: a new
daemon's log then mixes in an old job's lines.

How they are found, and nothing else: every start of `python -m deploy site` gives the daemon a fresh random
token in its environment (`FEDPATH_SITE_LAUNCH`), which every process it starts inherits, and records the
daemon's PID (the launcher's own: it `exec`s the daemon) with that token in `state-dir/site-daemon.json`, a
file it owns. The next start reads that file: a daemon still alive under that PID and token is another
daemon of this site (refused: stop it first); otherwise every process still carrying the previous token is a
leftover of this site's previous daemon, and is ended by PID (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from pathlib import Path

from common.files import atomic_write_json
from deploy.site.node_config import SiteConfigError
from simulations.processes import kill_processes_with_env, processes_with_env

TOKEN_ENV = "FEDPATH_SITE_LAUNCH"
PID_FILE = "site-daemon.json"
GRACE_SECONDS = 10.0


def end_leftovers(state: Path, act: bool = True) -> list[str]:
    """End the Flower processes this site's previous daemon left (`act=False`: only say which); notes."""
    previous = _previous(state)
    if previous is None:
        return []
    pid, token = int(previous["pid"]), str(previous["token"])
    found = processes_with_env(TOKEN_ENV, token)
    if pid in found:
        raise SiteConfigError(
            f"this site's daemon from {previous.get('started', 'an earlier start')} is still running (PID {pid}, "
            f"{_command(pid)}), on the same state-dir {state}: stop it first (systemctl stop fedpath-site, or "
            f"kill {pid}); two daemons must not serve one site"
        )
    if not found:
        return []
    listed = ", ".join(f"{p} ({_command(p)})" for p in found)
    if not act:
        return [f"a start would end {len(found)} Flower process(es) left by this site's previous daemon (PID {pid}, "
                f"gone): {listed}"]
    kill_processes_with_env(TOKEN_ENV, token, signal.SIGCONT, wait=0.0)  # a stopped process must see the SIGTERM
    kill_processes_with_env(TOKEN_ENV, token, signal.SIGTERM, wait=GRACE_SECONDS)  # by PID, from the token
    kill_processes_with_env(TOKEN_ENV, token, signal.SIGKILL, wait=5.0)  # whatever ignored SIGTERM
    return [f"ended {len(found)} Flower process(es) left by this site's previous daemon (PID {pid}, gone), which "
            f"would otherwise still write into this log: {listed}"]


def mark_daemon(state: Path, env: dict[str, str]) -> None:
    """Give the daemon about to be exec'd (this PID) a fresh token, and record both in state-dir."""
    env[TOKEN_ENV] = secrets.token_hex(16)
    atomic_write_json(state / PID_FILE, {"pid": os.getpid(), "token": env[TOKEN_ENV],
                                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, private=True)


def _previous(state: Path) -> dict | None:
    try:
        recorded = json.loads((state / PID_FILE).read_text())
        int(recorded["pid"]), str(recorded["token"])
        return recorded
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no earlier start recorded (or an unreadable record: then nothing is ended)


def _command(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    names = [Path(w.decode(errors="replace")).name for w in words if w][:2]
    return " ".join(names) or "?"
