"""The site launcher's plan: every check done, and the exact `flower-supernode` command and environment.

`plan_site` turns the launcher's arguments into a `SitePlan` without starting anything, so
`--check` can print it and tests can inspect it: the node config (`deploy.site.node_config`),
the machine's data, state and ledger (`deploy.site.preflight`), then the connection: TLS and the
site's SuperNode key, or plaintext only to a loopback address.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from deploy.flower import flower_bin, flower_env, is_loopback, split_address
from deploy.pki import check_root_certificates, check_site_private_key, openssh_fingerprint
from deploy.site.node_config import SiteConfigError, check_node_config, format_node_config, parse_node_config
from deploy.site.preflight import check_site_files


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
    unit_statement: str = ""  # the unit of privacy the site will train at, and why (deploy.site.preflight)



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



def plan_site(args: argparse.Namespace) -> SitePlan:
    """Check everything and build the command; raises SiteConfigError. `--check`/`--check-link` write no ledger."""
    try:
        host, port = split_address(args.superlink)
    except ValueError as err:
        raise SiteConfigError(f"--superlink: {err}") from None
    node_config = check_node_config(parse_node_config(args.node_config))
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    checking = bool(getattr(args, "check", False) or getattr(args, "check_link", False))
    found = check_site_files(node_config, classes, write=not checking)
    notes = found.notes
    state = Path(node_config["state-dir"])

    command = [flower_bin("flower-supernode"), "--superlink", args.superlink]
    connection, link = _connection(args, host, port, notes)
    command += connection
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
    return SitePlan(node_config["site-id"], node_config, command, env, log_file, notes, link, found.unit_statement)


def _connection(args: argparse.Namespace, host: str, port: int,
                notes: list[str]) -> tuple[list[str], LinkTarget | None]:
    """The SuperNode's connection flags and what the SuperLink check needs (None in plaintext); adds notes."""
    if args.insecure_local_testing:
        if not is_loopback(host):
            raise SiteConfigError(
                f"--insecure-local-testing sends model updates in plaintext and is only allowed to a loopback address "
                f"(127.0.0.1, ::1, localhost), not {host!r}; give --root-certificates (TLS) instead"
            )
        if args.root_certificates or args.private_key:
            raise SiteConfigError("--insecure-local-testing cannot be combined with --root-certificates or --private-key "
                                  "(Flower's SuperNode authentication requires TLS)")
        notes.append("PLAINTEXT connection without SuperNode authentication (--insecure-local-testing): testing only")
        return ["--insecure"], None
    command: list[str] = []
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
    return command, LinkTarget(f"[{host}]:{port}" if ":" in host else f"{host}:{port}", root, key_path, key)
