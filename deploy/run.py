"""`python -m deploy run`: check a job's run config as fedpath reads it, then submit it with `flwr run`.

    python -m deploy run --connection fedpath --run-config "num-server-rounds=8 dataset='/srv/central'"

Why: Flower 1.42's SuperLink refuses a run-config key that the app does not declare with a bare
`Invalid run configuration.` (its Control API turns the `ValueError` of `fuse_dicts(..., check_keys=True)` into
that public message); the key is named only in the SuperLink's own log (`Could not start run: ... Key
'share-diagnostics' is not present in the main dictionary`). So this command checks the overrides first with
fedpath's own rules (`common.config.run_config.load_app_config`: unknown keys, types, every value), names each
rejected key, says which are a site's node-config keys (each site's operator sets those; no run config can),
and only then `exec`s `flwr run APP CONNECTION --stream --run-config ...` (same PID, same exit status).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tomllib
from pathlib import Path

from common.config.run_config import ConfigError, load_app_config
from common.paths import REPO
from deploy.flower import flower_bin, flower_env


def rejected_keys(overrides: list[str], app: Path = REPO) -> str:
    """'' when every key of `overrides` is one of the app's run-config keys, else a message naming each, with help."""
    import click
    from flwr.common.config import parse_config_args

    from client.identity import DEPLOYMENT_KEYS, OPTIONAL_DEPLOYMENT_KEYS

    known = tomllib.loads((app / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    try:
        asked = parse_config_args(list(overrides))
    except (click.ClickException, ValueError):
        return ""  # load_app_config says what cannot be parsed
    lines = []
    for key in sorted(set(asked) - set(known)):
        if key in (*DEPLOYMENT_KEYS, *OPTIONAL_DEPLOYMENT_KEYS):
            stand_in = f"site-{key}"
            also = f"; in a simulation, {stand_in} stands in for it" if stand_in in known else ""
            lines.append(f"{key} is a site's node-config key: each site's operator sets it in its own --node-config, "
                         f"and no run config can{also}")
        else:
            close = difflib.get_close_matches(key, list(known), n=2)
            lines.append(f"{key} is not a run-config key" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
    if not lines:
        return ""
    return ("the run config names keys this app does not declare; the SuperLink would refuse the run with only "
            "'Invalid run configuration.':\n  - " + "\n  - ".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy run", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--connection", default="fedpath", help="the flwr connection (python -m deploy connection)")
    parser.add_argument("--app", default=str(REPO), help="the fedpath app directory (default: this checkout)")
    parser.add_argument("--run-config", action="append", default=[], metavar="'K=V ...'",
                        help="run-config overrides, as flwr run takes them (repeatable)")
    parser.add_argument("--check", action="store_true", help="only check the run config; submit nothing")
    args = parser.parse_args(argv)
    app = Path(args.app).expanduser().resolve()
    problem = rejected_keys(args.run_config, app)
    try:
        if not problem:
            load_app_config(app / "pyproject.toml", args.run_config)
    except ConfigError as err:
        problem = str(err)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    command = [flower_bin("flwr"), "run", str(app), args.connection, "--stream"]
    for override in args.run_config:
        command += ["--run-config", override]
    if args.check:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    os.execve(command[0], command, flower_env())
    return 1  # not reached
