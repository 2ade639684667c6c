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
  loader's words), with the federation's classes (`--classes`) and a unit of privacy (a
  patient where the data names patients; the patch only with `privacy-unit="patch"`);
  `state-dir` is writable; an existing privacy ledger there is readable, passes its integrity
  check and belongs to this site with this delta and unit; a missing one is started (at ε 0)
  only with `accept-new-ledger="<today's date>"`;
* Flower processes left by this site's previous daemon (a ClientApp that outlived a killed
  SuperNode) are ended by PID (`deploy.site.leftovers`); a daemon of this site still running
  stops the start;
* TLS: a readable root certificate (or the system's trust store), and the site's EC key
  for SuperNode authentication. Plaintext only with `--insecure-local-testing`, and then
  only to a loopback address.

`--check` and `--check-link` change no ledger and end no process: they say what a start would do.

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

# This module is the command line (its docstring is `--help`'s epilog). The pieces:
# `deploy.site.node_config` (the node config), `deploy.site.preflight` (data, state, ledger),
# `deploy.site.plan` (TLS, key, the command), `deploy.site.link_status` (the SuperLink's answer
# and the exit status).

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from client.identity import DEPLOYMENT_KEYS, OPTIONAL_DEPLOYMENT_KEYS
from deploy import link_check
from deploy.site.leftovers import end_leftovers, mark_daemon
from deploy.site.link_status import link_status
from deploy.site.node_config import SiteConfigError
from deploy.site.plan import SitePlan, plan_site

__all__ = ["SiteConfigError", "build_parser", "main", "plan_site"]

DEFAULT_RUNTIME_PORT = 9094  # Flower's default for the SuperNode's local Runtime API


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
    state = Path(plan.node_config["state-dir"])
    try:
        plan.notes += end_leftovers(state, act=not (args.check or args.check_link))
    except SiteConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check or args.check_link:
        _summary(plan)
        print(" ".join(shlex.quote(c) for c in plan.command))
        return link_status(plan, args.activation_wait, checking=True) if args.check_link else 0
    if plan.log_file is not None:
        _log_to(plan.log_file)
    _summary(plan)
    if not args.no_link_check:
        status = link_status(plan, args.activation_wait, checking=False)
        if status:
            return status
    mark_daemon(state, plan.env)  # this PID becomes the daemon: its children carry the token (deploy.site.leftovers)
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



def _summary(plan: SitePlan) -> None:
    config = plan.node_config
    print(f"fedpath site {plan.site_id}: data {config['data-path']}, state {config['state-dir']}, "
          f"budget epsilon={config['epsilon-budget']:g} delta={config['delta']:g}, {plan.unit_statement}",
          file=sys.stderr)
    for note in plan.notes:
        print(f"  {note}", file=sys.stderr)



if __name__ == "__main__":
    raise SystemExit(main())
