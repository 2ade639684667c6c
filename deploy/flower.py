"""What every deployment command needs from Flower: its executables, environment and config.

* Flower's daemons start helpers **by name** (`flower-superexec`, then `flwr-serverapp` or
  `flwr-clientapp`), so the directory of this interpreter's Flower executables goes first on
  `PATH`: the helpers then run in the same environment as fedpath, torch and Opacus.
* `FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`: otherwise Flower `uv sync`s the app's
  dependencies (torch!) into a fresh environment for every run, which needs the internet
  and minutes. A hospital installs fedpath once, from a reviewed source.
* Telemetry and the update check contact flower.ai; they are off unless the operator
  exports `FLWR_TELEMETRY_ENABLED=1` / `FLWR_DISABLE_UPDATE_CHECK=0` explicitly.
* `FLWR_HOME` (where Flower keeps installed app bundles and, for the CLI, `config.toml`) is
  per daemon, so a site's or the coordinator's Flower state lives where its operator says.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
import tomllib
from pathlib import Path

CONFIG_FILE = "config.toml"


def flower_bin(name: str) -> str:
    """Path of a Flower executable from this interpreter's environment."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH; install fedpath (pip install -e .)")
    return found


def flower_env(flwr_home: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower daemon or CLI call started by fedpath."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["PYTHONUNBUFFERED"] = "1"
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    return env


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` into (host, port); ValueError if it is not one."""
    if "://" in address:
        raise ValueError(f"address {address!r} must be host:port, without a scheme such as https://")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} must be host:port (e.g. link.example.org:9092 or 127.0.0.1:9092)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses: traffic that never leaves the machine."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_connection(
    flwr_home: Path, name: str, address: str, root_certificates: Path | None = None, insecure: bool = False,
    make_default: bool = False,
) -> Path:
    """Add or replace `[superlink.<name>]` in `$FLWR_HOME/config.toml`, keeping everything else.

    This is where `flwr run . <name>` and `flwr supernode register ... <name>` find the
    SuperLink's address and the CA certificate to verify it with.
    """
    import tomli_w  # a Flower dependency; the same writer Flower's CLI uses

    split_address(address)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / CONFIG_FILE
    config = tomllib.loads(path.read_text()) if path.exists() else {}
    links = config.setdefault("superlink", {})
    entry: dict[str, object] = {"address": address}
    if insecure:
        entry["insecure"] = True
    elif root_certificates is not None:
        entry["root-certificates"] = str(Path(root_certificates).resolve())
    links[name] = entry
    if make_default or "default" not in links:
        links["default"] = name
    text = "# Flower CLI configuration; [superlink.<name>] entries written by fedpath's deploy tools.\n"
    path.write_text(text + tomli_w.dumps(config))
    return path
