"""The coordinator's Flower CLI side: a named connection, and registering sites' public keys.

    python -m deploy connection --name fedpath --address link.example.org:9092 --root-certificates ca.crt
    python -m deploy register --public-key site-a.pub --site-id site-a [--connection fedpath]

    python -m deploy sites [--connection fedpath] [--public-key site-a.pub ...] [--format json]

`connection` writes `[superlink.fedpath]` into `$FLWR_HOME/config.toml` (default `~/.flwr`),
which is where `flwr run . fedpath` and `flwr supernode register ... fedpath` look up the
SuperLink's address and the CA certificate to verify it with. `register` is
`flwr supernode register <pub> <connection> --name <site-id>`: from then on the SuperLink
accepts a SuperNode that signs its requests with the matching private key, and no other.
`sites` says which node is which site: `flwr supernode list` (Flower 1.42) shows node ids and
status only, though the SuperLink's Control API returns each node's registered name and public
key too; `sites` prints them, with the key's `ssh-keygen -lf` fingerprint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.flower import flower_bin, flower_env, is_loopback, split_address, write_connection
from deploy.pki import check_root_certificates, openssh_fingerprint


def register_site(public_key: Path, site_id: str, connection: str | None = None, flwr_home: Path | None = None,
                  timeout: float = 60.0) -> int:
    """Register `public_key` under the name `site_id`; returns the SuperNode's node id."""
    command = [flower_bin("flwr"), "supernode", "register", str(Path(public_key).expanduser().resolve())]
    command += [connection] if connection else []
    command += ["--name", site_id, "--format", "json"]
    done = subprocess.run(command, env=flower_env(flwr_home), capture_output=True, text=True, timeout=timeout,
                          check=False)
    try:
        reply = json.loads(done.stdout[done.stdout.index("{"):]) if "{" in done.stdout else {}
    except ValueError:
        reply = {}
    if done.returncode != 0 or not reply.get("success"):
        detail = (reply.get("error-message") or done.stderr.strip() or done.stdout.strip())[-2000:]
        raise RuntimeError(f"registering {public_key} as {site_id} failed (exit {done.returncode}): {detail}")
    return int(reply["node-id"])


def main_register(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy register", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--public-key", type=Path, required=True, help="the site's <site-id>.pub (OpenSSH EC key)")
    parser.add_argument("--site-id", required=True, help="name shown by `flwr supernode list`")
    parser.add_argument("--connection", default=None, help="connection name in config.toml (default: its default)")
    parser.add_argument("--flwr-home", type=Path, default=None, help="Flower CLI home (default: $FLWR_HOME or ~/.flwr)")
    args = parser.parse_args(argv)
    try:
        node_id = register_site(args.public_key, args.site_id, args.connection, args.flwr_home)
    except (RuntimeError, FileNotFoundError, subprocess.TimeoutExpired) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"registered {args.site_id}: SuperNode id {node_id}")
    return 0


def main_connection(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy connection", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="fedpath", help="connection name (default fedpath)")
    parser.add_argument("--address", required=True, help="SuperLink HOST:PORT")
    parser.add_argument("--root-certificates", type=Path, help="CA certificate that signed the SuperLink's certificate")
    parser.add_argument("--insecure-local-testing", action="store_true", help="plaintext (a loopback SuperLink only)")
    parser.add_argument("--default", action="store_true", help="make it the default connection")
    parser.add_argument("--flwr-home", type=Path, default=None, help="Flower CLI home (default: $FLWR_HOME or ~/.flwr)")
    args = parser.parse_args(argv)
    home = args.flwr_home or Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))
    try:
        if args.insecure_local_testing and not is_loopback(split_address(args.address)[0]):
            raise ValueError("--insecure-local-testing is only allowed to a loopback SuperLink address")
        if args.root_certificates and not args.insecure_local_testing:
            check_root_certificates(args.root_certificates.expanduser())
        path = write_connection(home.expanduser(), args.name, args.address, args.root_certificates,
                                args.insecure_local_testing, args.default)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote [superlink.{args.name}] to {path}; use: flwr run . {args.name} --stream")
    return 0


@dataclass(frozen=True)
class RegisteredSite:
    """One SuperNode as the SuperLink records it: which site (name) holds which key, and its state."""

    node_id: int
    name: str
    status: str
    fingerprint: str
    registered_at: str
    last_online: str
    last_offline: str
    key_file: str = ""


def _fingerprint_of_pem(pem: bytes) -> str:
    """The `ssh-keygen -lf` fingerprint of a key as the SuperLink stores it (PEM SubjectPublicKeyInfo)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        return "?"
    return openssh_fingerprint(key) if isinstance(key, ec.EllipticCurvePublicKey) else "?"


def key_file_fingerprints(paths: list[Path]) -> dict[str, str]:
    """fingerprint -> file name, for the .pub files the coordinator received from the sites."""
    found = {}
    for path in paths:
        key = serialization.load_ssh_public_key(Path(path).expanduser().read_bytes())
        if isinstance(key, ec.EllipticCurvePublicKey):
            found[openssh_fingerprint(key)] = Path(path).name
    return found


def list_sites(connection: str | None = None, key_files: list[Path] | None = None,
               include_unregistered: bool = False) -> list[RegisteredSite]:
    """Every SuperNode the SuperLink knows, from its Control API (what `flwr supernode list` asks)."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest

    with contextlib.redirect_stdout(sys.stderr):  # Flower's "Using SuperLink: ..." line
        client = init_http_client_from_connection(read_superlink_connection(connection))
    try:
        nodes = client.ListNodes(ListNodesRequest()).nodes_info
    finally:
        client.close()
    files = key_file_fingerprints(key_files or [])
    sites = []
    for node in sorted(nodes, key=lambda n: n.registered_at):
        if node.status == "unregistered" and not include_unregistered:
            continue
        fingerprint = _fingerprint_of_pem(node.public_key)
        sites.append(RegisteredSite(int(node.node_id), node.name or "", node.status, fingerprint,
                                    node.registered_at, node.last_activated_at or "", node.last_deactivated_at or "",
                                    files.get(fingerprint, "")))
    return sites


def _table(sites: list[RegisteredSite], with_files: bool) -> str:
    header = ["node id", "site (registered name)", "status", "key fingerprint (ssh-keygen -lf)", "last online"]
    rows = [[str(s.node_id), s.name or "(no name)", s.status, s.fingerprint, s.last_online[:19] or "never"]
            for s in sites]
    if with_files:
        header.append("key file")
        rows = [row + [s.key_file or "-"] for row, s in zip(rows, sites)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows])


def main_sites(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy sites", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Which SuperNode is which site: node id, registered name, status and the key's fingerprint "
        "(compare with `ssh-keygen -lf <site>.pub`).")
    parser.add_argument("--connection", default=None, help="connection name in config.toml (default: its default)")
    parser.add_argument("--flwr-home", type=Path, default=None, help="Flower CLI home (default: $FLWR_HOME or ~/.flwr)")
    parser.add_argument("--public-key", type=Path, action="append", default=[], metavar="PUB",
                        help="a site's .pub file (repeatable): marks the node registered with it")
    parser.add_argument("--all", action="store_true", help="include unregistered (revoked) nodes")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    if args.flwr_home:
        os.environ["FLWR_HOME"] = str(args.flwr_home.expanduser().resolve())
    try:
        sites = list_sites(args.connection, args.public_key, args.all)
    except Exception as err:  # noqa: BLE001 - click, httpx, key-file errors: one line for the operator
        message = getattr(err, "message", None) or str(err)
        print(f"error: cannot list the SuperLink's sites: {type(err).__name__}: {message}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps({"sites": [asdict(s) for s in sites]}, indent=2))
    else:
        print(_table(sites, bool(args.public_key)))
    return 0
