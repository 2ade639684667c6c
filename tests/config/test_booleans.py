"""One boolean parser: the run config, a ClientApp's node config and the site launcher agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.identity import site_identity
from common.config.booleans import FALSE_WORDS, TRUE_WORDS, parse_bool
from common.config.run_config import ConfigError, RunConfig
from deploy.site.node_config import SiteConfigError, check_node_config
from tests.conftest import tiny_run_config

SPELLINGS = [(w, True) for w in (*TRUE_WORDS, "YES", " True ", True, 1)] + \
            [(w, False) for w in (*FALSE_WORDS, "No", False, 0)]


def _node(tmp_path: Path, strict: object) -> dict[str, object]:
    (tmp_path / "data" / "benign").mkdir(parents=True, exist_ok=True)
    return {"data-path": str(tmp_path / "data"), "site-id": "site-a", "epsilon-budget": 8.0, "delta": 1e-5,
            "state-dir": str(tmp_path / "state"), "strict": strict}


@pytest.mark.parametrize(("spelling", "meaning"), SPELLINGS)
def test_every_entry_point_reads_a_spelling_the_same_way(tmp_path: Path, spelling: object, meaning: bool) -> None:
    assert parse_bool(spelling) is meaning
    assert RunConfig.from_mapping(tiny_run_config(dp=spelling)).dp is meaning  # run config
    config = RunConfig.from_mapping(tiny_run_config())
    assert site_identity(_node(tmp_path, spelling), config, 1).strict is meaning  # ClientApp
    assert check_node_config(_node(tmp_path, spelling))["strict"] is meaning  # launcher


@pytest.mark.parametrize("spelling", ["maybe", "ture", "", 2, 0.5, None])
def test_anything_else_is_refused_everywhere(tmp_path: Path, spelling: object) -> None:
    with pytest.raises(ValueError, match="must be true or false"):
        parse_bool(spelling, "strict")
    with pytest.raises(ConfigError, match="dp=.* is not a valid bool"):
        RunConfig.from_mapping(tiny_run_config(dp=spelling))
    config = RunConfig.from_mapping(tiny_run_config())
    with pytest.raises(ConfigError, match="strict must be true or false"):
        site_identity(_node(tmp_path, spelling), config, 1)
    with pytest.raises(SiteConfigError, match="strict must be true or false"):
        check_node_config(_node(tmp_path, spelling))
