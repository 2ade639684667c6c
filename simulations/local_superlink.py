"""A private local SuperLink in simulation mode, started and stopped by us.

`flwr run` with the `:local:` connection starts a SuperLink lazily and leaves it running
in the background, on fixed ports, with the working directory of whoever ran first. The
launcher instead starts one of its own (same command line as Flower's lazy start) with:

* `FLWR_HOME` inside the repository (`.flwr/`, git-ignored) with a ready `config.toml`,
  so a newcomer needs no hand edits and a user's own Flower config is left alone;
* free ports, so two runs or a test and a run never talk to each other's SuperLink;
* runtime dependency installation off: Flower would otherwise `uv sync` the app's
  dependencies (torch!) into a fresh environment for every run, which needs network;
* the repository as working directory, so relative paths in the run config resolve there;

and stops it (with its SuperExec and simulation children) when the run ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from common.paths import REPO
from deploy.flower import flower_bin
from simulations.processes import kill_processes_with_env

CONNECTION = "local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_flower_config(flwr_home: Path) -> Path:
    """`$FLWR_HOME/config.toml` with the local simulation connection as default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        "# Written by fedpath (simulations/local_superlink.py).\n"
        '[superlink]\ndefault = "local"\n\n'
        "[superlink.local]\n"
        '# ":local:" = a local SuperLink in simulation mode (started by `flwr run` if none is up)\n'
        'address = ":local:"\n'
    )
    return path


class LocalSuperLink:
    """Context manager: a simulation-mode SuperLink on free ports under `flwr_home`."""

    def __init__(self, flwr_home: Path, cwd: Path = REPO, startup_timeout: float = 60.0) -> None:
        self.flwr_home = flwr_home
        self.cwd = cwd
        self.startup_timeout = startup_timeout
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_file = flwr_home / "local-superlink" / "superlink.log"

    @property
    def env(self) -> dict[str, str]:
        """Environment for `flwr` CLI calls that must reach this SuperLink."""
        env = dict(os.environ)
        # The SuperLink spawns `flower-superexec`, `flwr-simulation`... by name.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.update(
            FLWR_HOME=str(self.flwr_home),
            FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(self.http_port),
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def __enter__(self) -> LocalSuperLink:
        write_flower_config(self.flwr_home)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        database = self.flwr_home / "local-superlink" / "state.db"
        command = [
            flower_bin("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
            "--host", "127.0.0.1", "--port", str(self.http_port),
            "--database", str(database), "--log-file", str(self.log_file),
        ]
        self.process = subprocess.Popen(
            command, cwd=self.cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() takes its children with it
        )
        (self.flwr_home / "local-superlink" / "superlink.pid").write_text(str(self.process.pid))
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with {self.process.returncode}; see {self.log_file}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.http_port}/health", timeout=1.0).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"flower-superlink did not come up in {self.startup_timeout:.0f}s; see {self.log_file}")

    def stop(self) -> None:
        """Stop the SuperLink, then anything of this Flower home still running (Ray, apps)."""
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=10)
        kill_processes_with_env("FLWR_HOME", str(self.flwr_home), signal.SIGTERM, wait=5.0)
        kill_processes_with_env("FLWR_HOME", str(self.flwr_home), signal.SIGKILL)

    def __exit__(self, *exc: object) -> None:
        self.stop()
