"""Start the coordinator's SuperLink with TLS and SuperNode authentication on.

    python -m deploy superlink --certs certs/ --state-dir /var/lib/fedpath/superlink --host 0.0.0.0 --port 9092
    python -m deploy superlink --ssl-ca-certfile ca.pem --ssl-certfile link.pem --ssl-keyfile link.key ...

`exec`s `flower-superlink` with:

* `--ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`: one TLS endpoint (`--host:--port`) serves
  Flower 1.42's Fleet API (SuperNodes), Control API (`flwr run`, `flwr supernode register`)
  and Runtime API (the SuperLink's own ServerApp processes, which connect to 127.0.0.1, so
  the certificate must name 127.0.0.1 as well as the public name);
* `--enable-supernode-auth`: only SuperNodes whose public key was registered connect;
* `--database STATE-DIR/superlink.db`: registered keys, runs and their logs survive restarts;
* `--log-file STATE-DIR/superlink.log` (rotated daily, 7 kept) besides the console;
* `--isolation subprocess`: the SuperLink starts each run's ServerApp itself;
* runtime dependency installation off, and the working directory STATE-DIR, so a relative
  `output-dir` (default `runs`) puts run directories under STATE-DIR/runs.

Plaintext only with `--insecure-local-testing` on a loopback `--host` (Flower does not allow
SuperNode authentication without TLS, so that mode has none).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from deploy.flower import flower_bin, flower_env, is_loopback
from deploy.pki import check_root_certificates

DEFAULT_PORT = 9092


class SuperLinkConfigError(ValueError):
    """The SuperLink cannot start: the message names the flag or file to fix."""


def plan_superlink(args: argparse.Namespace) -> tuple[list[str], dict[str, str], Path]:
    """(command, environment, working directory); raises SuperLinkConfigError."""
    state = Path(args.state_dir).expanduser().resolve()
    command = [flower_bin("flower-superlink"), "--host", args.host, "--port", str(args.port)]
    if args.insecure_local_testing:
        if not is_loopback(args.host):
            raise SuperLinkConfigError(
                f"--insecure-local-testing serves plaintext and is only allowed on a loopback --host, not {args.host!r}"
            )
        if args.certs or args.ssl_certfile:
            raise SuperLinkConfigError("--insecure-local-testing cannot be combined with certificates")
        command.append("--insecure")
    else:
        if args.certs:
            certs = Path(args.certs).expanduser()
            ca, cert, key = certs / "ca.crt", certs / "server.crt", certs / "server.key"
        elif args.ssl_ca_certfile and args.ssl_certfile and args.ssl_keyfile:
            ca, cert, key = (Path(p).expanduser() for p in (args.ssl_ca_certfile, args.ssl_certfile, args.ssl_keyfile))
        else:
            raise SuperLinkConfigError(
                "TLS is required: give --certs DIR (from `python -m deploy test-pki`) or all of --ssl-ca-certfile, "
                "--ssl-certfile, --ssl-keyfile (your PKI); plaintext only with --insecure-local-testing on 127.0.0.1"
            )
        for flag, path in (("CA certificate", ca), ("server certificate", cert)):
            try:
                check_root_certificates(path)
            except ValueError as err:
                raise SuperLinkConfigError(f"{flag}: {err}") from None
        if not key.is_file():
            raise SuperLinkConfigError(f"server private key {key} does not exist")
        command += ["--ssl-ca-certfile", str(ca.resolve()), "--ssl-certfile", str(cert.resolve()),
                    "--ssl-keyfile", str(key.resolve()), "--enable-supernode-auth"]
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SuperLinkConfigError(f"--state-dir {state} cannot be created: {err}") from None
    command += [
        "--isolation", "subprocess",
        "--database", str(state / "superlink.db"),
        "--log-file", str(state / "superlink.log"),
        "--disable-runtime-dependency-installation",
    ]
    flwr_home = Path(args.flwr_home).expanduser().resolve() if args.flwr_home else state / "flwr-home"
    return command, flower_env(flwr_home), state


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy superlink", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", required=True, help="database, log, Flower home and (default) run outputs")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TLS port for all APIs (default {DEFAULT_PORT})")
    parser.add_argument("--certs", help="directory with ca.crt, server.crt, server.key (python -m deploy test-pki)")
    parser.add_argument("--ssl-ca-certfile", help="CA certificate (bundle) of your PKI")
    parser.add_argument("--ssl-certfile", help="the SuperLink's certificate (names every address it is reached by)")
    parser.add_argument("--ssl-keyfile", help="the SuperLink's private key")
    parser.add_argument("--flwr-home", help="Flower's state for the SuperLink (default: STATE-DIR/flwr-home)")
    parser.add_argument("--insecure-local-testing", action="store_true",
                        help="plaintext without SuperNode authentication, loopback --host only")
    parser.add_argument("--check", action="store_true", help="only check and print the command, do not start")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        command, env, workdir = plan_superlink(args)
    except (SuperLinkConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        print(" ".join(shlex.quote(c) for c in command))
        return 0
    print(f"fedpath SuperLink on {args.host}:{args.port} "
          f"({'PLAINTEXT, no SuperNode auth' if args.insecure_local_testing else 'TLS, SuperNode auth'}); "
          f"state {workdir}", file=sys.stderr)
    sys.stderr.flush()
    os.chdir(workdir)
    os.execve(command[0], command, env)
    return 1  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
