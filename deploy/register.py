"""The coordinator's Flower CLI side: a named connection, and registering sites' public keys.

    python -m deploy connection --name fedpath --address link.example.org:9092 --root-certificates ca.crt
    python -m deploy register --public-key site-a.pub --site-id site-a [--connection fedpath]

`connection` writes `[superlink.fedpath]` into `$FLWR_HOME/config.toml` (default `~/.flwr`),
which is where `flwr run . fedpath` and `flwr supernode register ... fedpath` look up the
SuperLink's address and the CA certificate to verify it with. `register` is
`flwr supernode register <pub> <connection> --name <site-id>`: from then on the SuperLink
accepts a SuperNode that signs its requests with the matching private key, and no other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from deploy.flower import flower_bin, flower_env, is_loopback, split_address, write_connection
from deploy.pki import check_root_certificates


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
