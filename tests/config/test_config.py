"""Run config: pyproject defaults, typed parsing, and errors that list valid values."""

from __future__ import annotations

import tomllib

import pytest

from common.config.run_config import ConfigError, RunConfig
from tests.conftest import REPO


def test_pyproject_defaults_match_the_code_and_validate() -> None:
    toml = tomllib.loads((REPO / "pyproject.toml").read_text())
    app_config = toml["tool"]["flwr"]["app"]["config"]
    config = RunConfig.from_mapping(app_config)
    assert config.extra == {}, f"keys in pyproject.toml unknown to RunConfig: {sorted(config.extra)}"
    assert config == RunConfig(), "pyproject.toml defaults drifted from common/config/run_config.py"
    required = {"num-server-rounds", "dataset", "image-size", "arch", "weights", "policy", "local-epochs",
                "batch-size", "lr", "dp", "epsilon", "delta", "max-grad-norm", "partitioning",
                "dirichlet-alpha", "seed", "output-dir"}
    assert required <= set(app_config)
    assert toml["tool"]["flwr"]["app"]["components"] == {"serverapp": "server.app:app", "clientapp": "client.app:app"}


def test_overrides_are_typed() -> None:
    config = RunConfig.from_mapping({"num-server-rounds": "3", "lr": 1, "dp": "false", "policy": "head"})
    assert (config.num_server_rounds, config.lr, config.dp, config.policy) == (3, 1.0, False, "head")


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("policy", "all", "valid values: full, last-block, norm-head, head"),
        ("arch", "vgg16", "valid values: resnet18, resnet34, resnet50"),
        ("partitioning", "random", "valid values: iid, dirichlet"),
        ("epsilon", 0.0, "epsilon must be > 0"),
        ("epsilon", -1.0, "epsilon must be > 0"),
        ("delta", 1.5, r"delta must be at most 1/\(10·n\)"),
        ("delta", 0.5, r"delta must be at most 1/\(10·n\)"),
        ("num-server-rounds", -1, "num-server-rounds must be >= 0"),
        ("weights", "resnet.onnx", "use one of auto, imagenet, none"),
        ("num-server-rounds", 2.5, "is not a valid int"),
    ],
)
def test_invalid_values_are_named_with_what_is_valid(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        RunConfig.from_mapping({key: value})


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError, match="invalid run config:") as info:
        RunConfig.from_mapping({"policy": "x", "arch": "y", "epsilon": -2})
    assert str(info.value).count("\n  - ") == 3


def test_auto_delta_is_one_over_site_records() -> None:
    assert RunConfig.from_mapping({"delta": 0.0}).site_delta(400) == pytest.approx(1 / 4000)  # 1/(10·n)
    assert RunConfig.from_mapping({"delta": 1e-5}).site_delta(400) == 1e-5


@pytest.mark.parametrize(("key", "value"), [("lr", float("inf")), ("max-grad-norm", float("inf")),
                                            ("noise-multiplier", float("nan")), ("epsilon", float("inf"))])
def test_non_finite_numbers_are_refused_even_where_a_range_rule_would_pass_them(key: str, value: float) -> None:
    """A malicious coordinator's `lr=inf` passes "lr > 0" and would make every site's update non-finite."""
    with pytest.raises(ConfigError, match=f"{key} must be a finite number"):
        RunConfig.from_mapping({key: value})


def test_round_acceptance_is_a_checked_key_with_validation_as_the_default() -> None:
    """issue 23: `validation` keeps a round iff its validation accuracy is >= the start's (server.round_acceptance)."""
    defaults = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert defaults["round-acceptance"] == RunConfig().round_acceptance == "validation"
    assert RunConfig.from_mapping({"round-acceptance": "all"}).round_acceptance == "all"
    with pytest.raises(ConfigError, match=r"round-acceptance 'best' is unknown; valid values: validation, all"):
        RunConfig.from_mapping({"round-acceptance": "best"})
