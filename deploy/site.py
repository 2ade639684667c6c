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
* `data-path` is an ImageFolder tree or an `.npz` file that the ClientApp's own loader
  accepts (empty class folders, unreadable files under strict=true, ... are refused in the
  loader's words); `state-dir` is writable; an existing privacy ledger there is readable and
  belongs to this site with this delta;
* TLS: a readable root certificate (or the system's trust store), and the site's EC key
  for SuperNode authentication. Plaintext only with `--insecure-local-testing`, and then
  only to a loopback address.

Then it asks the SuperLink whether the key is registered and its node free
(`deploy.link_check`): Flower's SuperNode says `Failed to activate SuperNode` for both an
unregistered key and a restart within a minute of a crash, which need opposite actions. It
waits out the second and refuses the first.

It then `exec`s `flower-supernode` (same PID, so systemd and `kill` see the daemon itself)
with absolute paths in the node config (the ClientApp runs in another working directory),
its Runtime API on 127.0.0.1 only, Flower's runtime dependency installation off, and
`FEDPATH_CACHE_DIR` under `state-dir` (decoded images stay on the site's disk).

Exit status, with `error:` lines saying what to do: 2 a check failed; 77 the SuperLink has no
registration for this key (systemd: RestartPreventExitStatus=77); 75 its node stays online
(another SuperNode with the key; systemd retries); 69 (`--check-link` only) SuperLink unreachable.
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

from cryptography.hazmat.primitives.asymmetric import ec

from client.identity import DEPLOYMENT_KEYS, OPTIONAL_DEPLOYMENT_KEYS, check_deployment_node_config
from common.booleans import parse_bool
from common.config import ConfigError
from deploy import link_check
from deploy.flower import flower_bin, flower_env, is_loopback, split_address
from deploy.pki import check_root_certificates, check_site_private_key, openssh_fingerprint

SIMULATION_KEYS = ("partition-id", "num-partitions")
BOOL_KEYS = ("allow-non-private", "strict", "share-diagnostics")
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
    link: LinkTarget | None = None  # None: plaintext testing, no key to ask the SuperLink about


@dataclass(frozen=True)
class LinkTarget:
    """What the SuperLink check needs: where the SuperLink is, how to trust it, the site's key."""

    address: str
    root_certificates: Path | None
    key_path: Path
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def fingerprint(self) -> str:
        return openssh_fingerprint(self.key)


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
            try:
                checked[key] = parse_bool(node_config[key], key)
            except ValueError as err:
                raise SiteConfigError(str(err)) from None
    for key in OPTIONAL_DEPLOYMENT_KEYS:  # the rest, as given (check_deployment_node_config checked them)
        if key in node_config and key not in checked:
            checked[key] = node_config[key]
    return {key: checked[key] for key in (*DEPLOYMENT_KEYS, *OPTIONAL_DEPLOYMENT_KEYS) if key in checked}


def check_site_files(node_config: Mapping[str, Any], classes: list[str] | None = None) -> list[str]:
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

    notes = _check_ledger(node_config, state)
    notes.append(check_site_data(node_config, classes))
    return notes


def check_site_data(node_config: Mapping[str, Any], classes: list[str] | None = None) -> str:
    """Load `data-path` through the ClientApp's own loader now, not at the first round hours later.

    `client.site.load_site_data` is what the ClientApp calls each round (it reads the site's
    identity, split key and loader settings from the same node config), so whatever it refuses
    (a class folder without images, images without a group in groups.csv, unreadable files under
    strict=true) stops the site here in the loader's own words. `classes` is the federation's
    class list where the operator gives it (`--classes`): only then can an empty folder declare
    a class the site has no images of, as the ClientApp, which knows the list, allows. It
    decodes every image once at the default image-size into the daemon's cache
    (state-dir/cache), which the first run at that size reuses.
    """
    from client.identity import site_identity
    from client.site import load_site_data
    from common.config import RunConfig
    from common.data.imageset import DataError

    config = RunConfig.from_mapping({})
    previous = os.environ.get("FEDPATH_CACHE_DIR")
    os.environ["FEDPATH_CACHE_DIR"] = previous or str(Path(node_config["state-dir"]) / "cache")  # as the daemon's
    try:
        site = load_site_data(site_identity(node_config, config, run_id=0), config, classes)
    except (DataError, OSError) as err:
        raise SiteConfigError(f"data-path cannot be trained on: {err}") from None
    finally:
        if previous is None:
            os.environ.pop("FEDPATH_CACHE_DIR", None)
    counts = [a + b for a, b in zip(site.train.class_counts(), site.val.class_counts())]
    classes = ", ".join(f"{name} {count}" for name, count in zip(site.train.classes, counts))
    return (f"data: {len(site.train)} training + {len(site.val)} validation images, "
            f"{len(site.train.classes)} classes ({classes})")


def _check_ledger(node_config: Mapping[str, Any], state: Path) -> list[str]:
    """The existing privacy ledger must belong to this site and delta; say what it holds."""
    from client.identity import parse_budget_change
    from common.privacy.ledger import LEDGER_FILE, LedgerError, PrivacyLedger

    notes = []
    if (state / LEDGER_FILE).exists():
        try:
            ledger = PrivacyLedger.open(
                state, node_config["site-id"], node_config["delta"], node_config["epsilon-budget"],
                unit=None,  # the unit in force is resolved with the data at the first round
                accept_budget_change=parse_budget_change(str(node_config.get("accept-budget-change", ""))),
            )
        except (LedgerError, KeyError, TypeError, ValueError) as err:
            raise SiteConfigError(f"the privacy ledger in state-dir cannot be used: {err}") from None
        if ledger.budget_changed:  # the operator's (acknowledged) change is on record before the site starts
            ledger.save()
        notes.append(
            f"privacy ledger {ledger.path}: epsilon {ledger.epsilon():.3f} of {node_config['epsilon-budget']:g} "
            f"spent in {len(ledger.rounds)} round(s) (delta={ledger.delta:g}, unit of privacy: one {ledger.unit})"
        )
        for change in ledger.budget_changes:
            notes.append(f"lifetime budget changed from {change['old']:g} to {change['new']:g} by {change['by']} "
                         f"({change['how']})")
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
        host, port = split_address(args.superlink)
    except ValueError as err:
        raise SiteConfigError(f"--superlink: {err}") from None
    link: LinkTarget | None = None
    node_config = check_node_config(parse_node_config(args.node_config))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    notes = check_site_files(node_config, classes)
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
            key = check_site_private_key(key_path)
        except ValueError as err:
            raise SiteConfigError(f"--private-key: {err}") from None
        if key_path.stat().st_mode & 0o077:
            notes.append(f"warning: {key_path} is readable by other users; chmod 600 it")
        command += ["--auth-supernode-private-key", str(key_path)]
        root = Path(args.root_certificates).expanduser().resolve() if args.root_certificates else None
        link = LinkTarget(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", root, key_path, key)
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
    return SitePlan(node_config["site-id"], node_config, command, env, log_file, notes, link)


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
    parser.add_argument("--classes", metavar="A,B,...",
                        help="the federation's class names: lets an empty class folder declare a class this site has "
                        "no images of (without it the check refuses empty class folders)")
    parser.add_argument("--log-file", metavar="PATH",
                        help="append the daemon's output here instead of the terminal (per-round lines, no images)")
    parser.add_argument("--flwr-home", metavar="DIR", help="Flower's state for this site (default: STATE-DIR/flwr-home)")
    parser.add_argument("--max-wait-time", type=float, default=None, metavar="S",
                        help="give up reconnecting to the SuperLink after S seconds (default: retry forever)")
    parser.add_argument("--insecure-local-testing", action="store_true",
                        help="plaintext, no SuperNode authentication; refused unless the SuperLink is on 127.0.0.1")
    parser.add_argument("--activation-wait", type=float, default=link_check.DEFAULT_ACTIVATION_WAIT, metavar="S",
                        help="if the SuperLink still counts this site online (a restart soon after a crash), wait up "
                        f"to S seconds for it to be released (default {link_check.DEFAULT_ACTIVATION_WAIT:g}; Flower "
                        f"releases a crashed node {link_check.RELEASE_SECONDS:g} s after its last heartbeat)")
    parser.add_argument("--no-link-check", action="store_true",
                        help="start without first asking the SuperLink whether this site's key is registered")
    parser.add_argument("--check", action="store_true",
                        help="only check this machine's configuration and print the command; connect nowhere")
    parser.add_argument("--check-link", action="store_true",
                        help="as --check, then also ask the SuperLink whether the key is registered and its node free")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = plan_site(args)
    except (SiteConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check or args.check_link:
        _summary(plan)
        print(" ".join(shlex.quote(c) for c in plan.command))
        return _link_status(plan, args.activation_wait, checking=True) if args.check_link else 0
    if plan.log_file is not None:
        _log_to(plan.log_file)
    _summary(plan)
    if not args.no_link_check:
        status = _link_status(plan, args.activation_wait, checking=False)
        if status:
            return status
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(plan.command[0], plan.command, plan.env)
    return 1  # not reached


def _log_to(path: Path) -> None:
    """Send this process's (and so the daemon's) stdout and stderr to `path`, appending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _link_status(plan: SitePlan, wait: float, checking: bool) -> int:
    """Ask the SuperLink about this site's key; 0 to go on, else the exit status, having said what to do.

    Before starting (`checking=False`) only an unregistered key (77) and a node that stays online
    (75) stop the start: a SuperLink that cannot be reached now is left to the SuperNode, which
    retries until it answers, as it always did.
    """
    if plan.link is None:
        return 0
    say = lambda text: print(f"  {text}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result = link_check.check_link(plan.link.address, plan.link.root_certificates, plan.link.key, wait, say)
    except link_check.LinkConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.outcome == link_check.READY:
        released = f"; released after {result.waited:.0f} s (it was still online from a stop without SIGTERM)" \
            if result.waited >= 1 else ""
        say(f"SuperLink {plan.link.address}: key {plan.link.fingerprint} {result.detail}{released}")
        return 0
    if result.outcome == link_check.UNREGISTERED:
        print(unregistered_message(plan), file=sys.stderr)
        return link_check.EXIT_UNREGISTERED
    if result.outcome == link_check.STILL_ONLINE:
        print(still_online_message(plan, result.waited), file=sys.stderr)
        return link_check.EXIT_STILL_ONLINE
    if checking:
        print(f"error: {result.detail}", file=sys.stderr)
        return 69 if result.outcome == link_check.UNREACHABLE else 1  # sysexits EX_UNAVAILABLE
    retrying = " (it keeps retrying until the SuperLink answers)" if result.outcome == link_check.UNREACHABLE else ""
    say(f"{result.detail}; starting the SuperNode anyway{retrying}")
    return 0


def unregistered_message(plan: SitePlan) -> str:
    """Say that only the coordinator can fix this, and what each side checks."""
    assert plan.link is not None
    link, pub = plan.link, plan.link.key_path.with_suffix(".pub")
    shown = f"ssh-keygen -lf {pub}" if pub.exists() else f"ssh-keygen -y -f {link.key_path} | ssh-keygen -lf -"
    return (
        f"error: the SuperLink at {link.address} has no registration for this site's key {link.key_path} "
        f"(fingerprint {link.fingerprint}).\n"
        "  flower-supernode would only say `Failed to activate SuperNode` (Exit Code: 305), as it does for a restart "
        "too soon after a crash; but this is not that (which clears by itself within a minute): restarting will not "
        f"help, so the launcher exits {link_check.EXIT_UNREGISTERED}, which the systemd unit's "
        "RestartPreventExitStatus= stops retrying.\n"
        "  What to do:\n"
        f"  1. check that --private-key is the key whose .pub was sent to the coordinator: `{shown}` prints "
        f"{link.fingerprint};\n"
        f"  2. ask the coordinator to run `python -m deploy sites`, which lists every registered site with its key's "
        f"fingerprint; if {link.fingerprint} is not there, they register {pub.name} "
        f"(`python -m deploy register --public-key {pub.name} --site-id {plan.site_id}`), comparing the fingerprint "
        "with you over the phone;\n"
        "  3. then start the site again (systemctl restart fedpath-site)."
    )


def still_online_message(plan: SitePlan, waited: float) -> str:
    """A crash leftover clears within a minute; a node that stays online is another SuperNode with this key."""
    assert plan.link is not None
    release = link_check.RELEASE_SECONDS
    if waited >= release:
        cause = (f"That is not a crash leftover (Flower releases those within {release:g} s): another SuperNode with "
                 f"this key is running and sending heartbeats: here (`pgrep -af flower-supernode`) or on another "
                 f"machine with a copy of {plan.link.key_path.name}. Stop it first.")
    else:
        cause = (f"Most likely this site was stopped without SIGTERM (crash, kill -9, power loss) less than "
                 f"{release:g} s ago and the SuperLink has not yet missed its heartbeats: start it again in a minute "
                 f"(or give --activation-wait {link_check.DEFAULT_ACTIVATION_WAIT:g}). If it persists, another "
                 "SuperNode with this key is running (`pgrep -af flower-supernode`): stop it first.")
    return (
        f"error: the SuperLink at {plan.link.address} has this site's key {plan.link.fingerprint} registered, but "
        f"still counts its node online after {waited:.0f} s of waiting (flower-supernode would say `Failed to "
        f"activate SuperNode`). {cause}\n"
        f"  Exit {link_check.EXIT_STILL_ONLINE}: systemd restarts the site after RestartSec (Restart=on-failure)."
    )


def _summary(plan: SitePlan) -> None:
    config = plan.node_config
    print(f"fedpath site {plan.site_id}: data {config['data-path']}, state {config['state-dir']}, "
          f"budget epsilon={config['epsilon-budget']:g} delta={config['delta']:g}", file=sys.stderr)
    for note in plan.notes:
        print(f"  {note}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
