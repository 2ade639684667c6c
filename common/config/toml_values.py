"""Config values written as TOML, the syntax Flower reads `pyproject.toml`, `--run-config` and `--node-config` in.

One definition for everything that writes a value back out: the launchers' and harness's
`--run-config` overrides (`simulations.harness.scenario`), the site launcher's `--node-config`
(`deploy.site.node_config`) and the report's configuration table. The writing is `tomli_w`'s (the
writer Flower's own CLI uses), so what comes out is what Flower's parser reads back.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import tomli_w


def toml_value(value: Any) -> str:
    """A value as TOML writes it: `true`, `0.1`, `8`, `1e-05`, `"norm-head"`, `""`, `inf`.

    NumPy numbers are written as numbers; anything else that is not a TOML scalar (a path, a list)
    as its text, so that the value stays on one line of a command.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        value = float(value)
    elif not isinstance(value, (bool, str)):
        value = str(value)
    return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")


def toml_assignments(values: Mapping[str, Any]) -> str:
    """`key=value` pairs separated by spaces: the `--run-config` / `--node-config` syntax of Flower's CLI."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())
