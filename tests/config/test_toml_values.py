"""Config values written back out as TOML (`common.config.toml_values`): one writer for the launchers'
`--run-config`, the site launcher's `--node-config` and the report's configuration table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from flwr.common.config import parse_config_args

from common.config.toml_values import toml_assignments, toml_value


def test_values_are_written_as_pyproject_writes_them() -> None:
    assert toml_value(True) == "true" and toml_value(False) == "false"
    assert toml_value("") == '""' and toml_value("norm-head") == '"norm-head"'
    assert toml_value(0.1) == "0.1" and toml_value(8) == "8" and toml_value(1e-5) == "1e-05"
    assert toml_value(np.int64(5)) == "5" and toml_value(np.float32(0.25)) == "0.25"
    assert toml_value(Path("/srv/my export")) == '"/srv/my export"'


def test_what_is_written_is_what_flowers_parser_reads_back() -> None:
    values = {"data-path": "/srv/my export/x", "site-id": "site-é", "epsilon-budget": 8, "delta": 1e-5,
              "strict": True, "allow-non-private": False, "lr": 0.1, "stain-reference": "", "ratio": float("inf")}
    parsed = parse_config_args([toml_assignments(values)])
    assert math.isinf(parsed.pop("ratio")) and parsed == {k: v for k, v in values.items() if k != "ratio"}
