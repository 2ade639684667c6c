"""Start a hospital's SuperNode: check everything first, then become `flower-supernode`.

    python -m deploy site --superlink link.example.org:9092 \\
        --root-certificates /etc/fedpath/ca.crt --private-key /etc/fedpath/site-a.key \\
        --node-config 'data-path="/data/export" site-id="site-a" epsilon-budget=8.0 delta=1e-5
                       state-dir="/var/lib/fedpath/site-a"'

`flower-supernode` itself accepts any node config and only runs fedpath's code when the
first round arrives, so a forgotten key would surface hours later as a failed round. This
launcher checks, before anything connects:

* the node config (Flower's own syntax, or a `.toml` file): every key in
  `client.identity.DEPLOYMENT_KEYS`, nothing unknown, numbers that make sense, no
  simulation keys (`partition-id` would make the ClientApp take its data and budget from
  the coordinator's run config);
* `data-path` is an ImageFolder tree or an `.npz` file; `state-dir` is writable; an existing
  privacy ledger there is readable and belongs to this site with this delta;
* TLS: a readable root certificate (or the system's trust store), and the site's EC key
  for SuperNode authentication. Plaintext only with `--insecure-local-testing`, and then
  only to a loopback address.

It then `exec`s `flower-supernode` (same PID, so systemd and `kill` see the daemon itself)
with absolute paths in the node config (the ClientApp runs in another working directory),
its Runtime API on 127.0.0.1 only, Flower's runtime dependency installation off, and
`FEDPATH_CACHE_DIR` under `state-dir` (decoded images stay on the site's disk).

Exit status 2 and one `error:` line naming the problem when a check fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.identity import DEPLOYMENT_KEYS, OPTIONAL_DEPLOYMENT_KEYS, check_deployment_node_config
from common.config import ConfigError
from deploy.flower import flower_bin, flower_env, is_loopback, split_address
from deploy.pki import check_root_certificates, check_site_private_key

SIMULATION_KEYS = ("partition-id", "num-partitions")
BOOL_KEYS = ("allow-non-private", "strict")
PATH_KEYS = ("data-path", "state-dir")
DEFAULT_RUNTIME_PORT = 9094  # Flower's default for the SuperNode's local Runtime API


class SiteConfigError(ValueError):
    """The site cannot start: the message names the key, file or flag to fix."""


@dataclass
class SitePlan:
    """Everything checked, and the exact command and environment the site daemon runs with."""

    site_id: str
    node_config: dict[str, Any]
    command: list[str]
    env: dict[str, str] = field(repr=False)
    log_file: Path | None
    notes: list[str]


def parse_node_config(text: str) -> dict[str, Any]:
    """A `--node-config` value exactly as flower-supernode will read it (key=value pairs or a .toml file)."""
    import click
    from flwr.common.config import parse_config_args

    if text.strip().endswith(".toml") and not Path(text.strip()).expanduser().is_file():
        raise SiteConfigError(f"node config file {text.strip()} does not exist")
    try:
        return dict(parse_config_args([text.strip()]))
    except (click.ClickException, ValueError, OSError) as err:
        message = err.message if isinstance(err, click.ClickException) else str(err)
        raise SiteConfigError(
            f"cannot parse --node-config: {message} Strings need double quotes: "
            'data-path="/data/export" site-id="site-a" epsilon-budget=8.0 delta=1e-5 state-dir="/var/lib/fedpath/site-a"'
        ) from None


def check_node_config(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The validated node config with absolute paths; SiteConfigError naming what is wrong."""
    sim = [k for k in SIMULATION_KEYS if k in node_config]
    if sim:
        raise SiteConfigError(
            f"--node-config has {', '.join(sim)}, which are for simulation: with them the ClientApp would take "
            "its data and privacy budget from the coordinator's run config. A deployed site sets "
            + " ".join(f"{k}=..." for k in DEPLOYMENT_KEYS)
        )
    try:
        budget, delta = check_deployment_node_config(node_config)
    except ConfigError as err:
        raise SiteConfigError(str(err)) from None
    known = set(DEPLOYMENT_KEYS) | set(OPTIONAL_DEPLOYMENT_KEYS)
    unknown = sorted(set(node_config) - known)
    if unknown:
        raise SiteConfigError(
            f"--node-config has unknown keys {unknown}; valid keys: {', '.join(DEPLOYMENT_KEYS)} "
            f"(required), {', '.join(OPTIONAL_DEPLOYMENT_KEYS)} (optional)"
        )
    checked: dict[str, Any] = {"epsilon-budget": budget, "delta": delta}
    site_id = node_config["site-id"]
    if not isinstance(site_id, str) or not site_id.strip() or any(c in site_id for c in "\"'\n"):
        raise SiteConfigError(f"site-id must be a non-empty string without quotes, got {site_id!r}")
    checked["site-id"] = site_id
    for key in PATH_KEYS:
        value = node_config[key]
        if not isinstance(value, str) or '"' in value or "'" in value:
            raise SiteConfigError(f'{key} must be a quoted path without quote characters, e.g. {key}="/srv/x"')
        checked[key] = str(Path(value).expanduser().resolve())
    for key in BOOL_KEYS:
        if key in node_config:
            value = node_config[key]
            if isinstance(value, bool):
                checked[key] = value
            elif isinstance(value, str) and value.lower() in ("true", "false"):
                checked[key] = value.lower() == "true"
            else:
                raise SiteConfigError(f"{key} must be true or false, got {value!r}")
    return {key: checked[key] for key in (*DEPLOYMENT_KEYS, *OPTIONAL_DEPLOYMENT_KEYS) if key in checked}


def check_site_files(node_config: Mapping[str, Any]) -> list[str]:
    """Data, state directory and ledger checks; returns notes for the operator."""
    data = Path(node_config["data-path"])
    if not data.exists():
        raise SiteConfigError(f"data-path {data} does not exist")
    if data.is_file() and data.suffix != ".npz":
        raise SiteConfigError(f"data-path {data} is a file but not an .npz; give an ImageFolder directory or an .npz")
    if data.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in data.iterdir()):
        raise SiteConfigError(f"data-path {data} has no class sub-folders; an ImageFolder tree has one folder per class")
    state = Path(node_config["state-dir"])
    state_abs, data_abs = state.resolve(), data.resolve()
    if state_abs == data_abs or state_abs in data_abs.parents or data_abs in state_abs.parents:
        raise SiteConfigError(
            f"state-dir {state} and data-path {data} must be separate, neither inside the other: the site's "
            "ledger and decoded-image cache must not be read as training data, nor patient data backed up with state"
        )
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SiteConfigError(f"state-dir {state} cannot be created: {err}") from None
    if not os.access(state, os.W_OK | os.X_OK):
        raise SiteConfigError(f"state-dir {state} is not writable by this user; the privacy ledger lives there")

    from common.ledger import LEDGER_FILE, LedgerError, PrivacyLedger

    notes = []
    if (state / LEDGER_FILE).exists():
        try:
            ledger = PrivacyLedger.open(state, node_config["site-id"], node_config["delta"],
                                        node_config["epsilon-budget"])
        except (LedgerError, KeyError, TypeError, ValueError) as err:
            raise SiteConfigError(f"the privacy ledger in state-dir cannot be used: {err}") from None
        notes.append(
            f"privacy ledger {ledger.path}: epsilon {ledger.epsilon():.3f} of {node_config['epsilon-budget']:g} "
            f"spent in {len(ledger.rounds)} round(s) (delta={ledger.delta:g})"
        )
    else:
        notes.append(f"no privacy ledger yet in {state}: this site has not trained; it starts at epsilon 0")
    return notes


def format_node_config(node_config: Mapping[str, Any]) -> str:
    """Node config in Flower's `key=value` syntax (strings double-quoted, TOML numbers and booleans)."""
    parts = []
    for key, value in node_config.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            text = repr(value) if math.isfinite(value) else str(value)
        elif isinstance(value, int):
            text = str(value)
        else:
            text = json.dumps(str(value))
        parts.append(f"{key}={text}")
    return " ".join(parts)


def plan_site(args: argparse.Namespace) -> SitePlan:
    """Check everything and build the command; raises SiteConfigError."""
    try:
        host, _ = split_address(args.superlink)
    except ValueError as err:
        raise SiteConfigError(f"--superlink: {err}") from None
    node_config = check_node_config(parse_node_config(args.node_config))
    notes = check_site_files(node_config)
    state = Path(node_config["state-dir"])

    command = [flower_bin("flower-supernode"), "--superlink", args.superlink]
    if args.insecure_local_testing:
        if not is_loopback(host):
            raise SiteConfigError(
                f"--insecure-local-testing sends model updates in plaintext and is only allowed to a loopback address "
                f"(127.0.0.1, ::1, localhost), not {host!r}; give --root-certificates (TLS) instead"
            )
        if args.root_certificates or args.private_key:
            raise SiteConfigError("--insecure-local-testing cannot be combined with --root-certificates or --private-key "
                                  "(Flower's SuperNode authentication requires TLS)")
        command.append("--insecure")
        notes.append("PLAINTEXT connection without SuperNode authentication (--insecure-local-testing): testing only")
    else:
        if args.root_certificates:
            try:
                check_root_certificates(Path(args.root_certificates).expanduser())
            except ValueError as err:
                raise SiteConfigError(f"--root-certificates: {err}") from None
            command += ["--root-certificates", str(Path(args.root_certificates).expanduser().resolve())]
        else:
            notes.append("no --root-certificates: the SuperLink's certificate is verified against the system trust store")
        if not args.private_key:
            raise SiteConfigError(
                "--private-key is required: the SuperLink accepts only SuperNodes with a registered key "
                "(make one with `python -m deploy site-keys`, have its .pub registered by the coordinator)"
            )
        key_path = Path(args.private_key).expanduser().resolve()
        try:
            check_site_private_key(key_path)
        except ValueError as err:
            raise SiteConfigError(f"--private-key: {err}") from None
        if key_path.stat().st_mode & 0o077:
            notes.append(f"warning: {key_path} is readable by other users; chmod 600 it")
        command += ["--auth-supernode-private-key", str(key_path)]
    command += [
        "--node-config", format_node_config(node_config),
        "--isolation", "subprocess",
        "--host", "127.0.0.1", "--port", str(args.runtime_port),
    ]
    if args.max_wait_time is not None:
        command += ["--max-wait-time", str(args.max_wait_time)]

    flwr_home = Path(args.flwr_home).expanduser().resolve() if args.flwr_home else state / "flwr-home"
    env = flower_env(flwr_home)
    env.setdefault("FEDPATH_CACHE_DIR", str(state / "cache"))
    log_file = Path(args.log_file).expanduser().resolve() if args.log_file else None
    return SitePlan(node_config["site-id"], node_config, command, env, log_file, notes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy site", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Check a hospital's SuperNode configuration, then run flower-supernode with it.",
        epilog=__doc__,
    )
    parser.add_argument("--superlink", required=True, metavar="HOST:PORT", help="the coordinator's SuperLink")
    parser.add_argument("--node-config", required=True, metavar="'K=V ...' | FILE.toml",
                        help="the site's identity, data, budget and state: " + ", ".join(DEPLOYMENT_KEYS)
                        + " (required); " + ", ".join(OPTIONAL_DEPLOYMENT_KEYS) + " (optional)")
    parser.add_argument("--root-certificates", metavar="PEM",
                        help="CA certificate(s) that signed the SuperLink's certificate (default: system trust store)")
    parser.add_argument("--private-key", metavar="KEY", help="this site's OpenSSH EC private key (SuperNode auth)")
    parser.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT,
                        help=f"local port (127.0.0.1) of the SuperNode's Runtime API for its ClientApps; each "
                        f"SuperNode on one machine needs its own (default {DEFAULT_RUNTIME_PORT})")
    parser.add_argument("--log-file", metavar="PATH",
                        help="append the daemon's output here instead of the terminal (per-round lines, no images)")
    parser.add_argument("--flwr-home", metavar="DIR", help="Flower's state for this site (default: STATE-DIR/flwr-home)")
    parser.add_argument("--max-wait-time", type=float, default=None, metavar="S",
                        help="give up reconnecting to the SuperLink after S seconds (default: retry forever)")
    parser.add_argument("--insecure-local-testing", action="store_true",
                        help="plaintext, no SuperNode authentication; refused unless the SuperLink is on 127.0.0.1")
    parser.add_argument("--check", action="store_true", help="only check and print the command, do not start")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = plan_site(args)
    except (SiteConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        _summary(plan)
        print(" ".join(shlex.quote(c) for c in plan.command))
        return 0
    if plan.log_file is not None:
        plan.log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(plan.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    _summary(plan)
    sys.stderr.flush()
    os.execve(plan.command[0], plan.command, plan.env)
    return 1  # not reached


def _summary(plan: SitePlan) -> None:
    config = plan.node_config
    print(f"fedpath site {plan.site_id}: data {config['data-path']}, state {config['state-dir']}, "
          f"budget epsilon={config['epsilon-budget']:g} delta={config['delta']:g}", file=sys.stderr)
    for note in plan.notes:
        print(f"  {note}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
