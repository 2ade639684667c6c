"""A site's node config as the launcher reads it: Flower's syntax in, checked values out, Flower's syntax back.

`flower-supernode` accepts any node config and only runs fedpath's code at the first round,
so `python -m deploy site` parses the operator's `--node-config` exactly as Flower will, checks
it with the ClientApp's own rules (`client.identity`) and refuses simulation keys, then writes
it back (absolute paths) for the daemon's command line. Kept apart from the file checks and the
launch so each can be read and tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.identity import DEPLOYMENT_KEYS, OPTIONAL_DEPLOYMENT_KEYS, check_deployment_node_config
from common.config.booleans import parse_bool
from common.config.run_config import ConfigError
from common.config.toml_values import toml_assignments

SIMULATION_KEYS = ("partition-id", "num-partitions")
BOOL_KEYS = ("allow-non-private", "strict", "share-diagnostics")
PATH_KEYS = ("data-path", "state-dir")


class SiteConfigError(ValueError):
    """The site cannot start: the message names the key, file or flag to fix."""



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



def format_node_config(node_config: Mapping[str, Any]) -> str:
    """Node config in Flower's `key=value` syntax (strings double-quoted, TOML numbers and booleans)."""
    return toml_assignments(node_config)
