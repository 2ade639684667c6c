"""A site's messy data: clear errors or refusals before any training, nothing leaked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from client.identity import site_identity
from client.site import SITE_LOG, run_round
from common.config.run_config import ConfigError
from common.data.imageset import DataError
from common.privacy.ledger import LEDGER_FILE
from common.wire import reply as wire
from tests.helpers.site_inputs import CLASSES, deployed_node, round_request, site_config, site_tree


@pytest.mark.slow  # a site round, sigma calibrated
def test_unreadable_files_are_skipped_counted_and_kept_on_site(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data")
    (data / "benign" / "zero.png").write_bytes(b"")
    (data / "tumour" / "scan.txt").write_text("scanner log, not an image")
    (data / "tumour" / "cut.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF truncated")
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, data, **{"share-diagnostics": "true"}), config, run_id=1)
    result = run_round(identity, config, round_request(config))
    assert result.status == "trained" and result.reply.diagnostics["skipped-files"] == 3  # a count, opted in
    assert "zero.png" not in json.dumps(wire.encode(result.reply))  # no paths leave the site
    local = [json.loads(line) for line in (tmp_path / "state" / SITE_LOG).read_text().splitlines()]
    assert local[-1]["skipped_files"] == 3 and any("zero.png" in e for e in local[-1]["skipped_examples"])


def test_strict_mode_makes_unreadable_files_an_error(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data")
    (data / "benign" / "zero.png").write_bytes(b"")
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, data, strict="true"), config, run_id=1)
    with pytest.raises(DataError, match=r"zero\.png.*strict=true"):
        run_round(identity, config, round_request(config))


def test_class_mismatch_is_an_error_before_any_training(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", classes=["benign", "necrosis"])
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, data), config, run_id=1)
    with pytest.raises(DataError, match=re.escape("unexpected classes ['necrosis']")) as info:
        run_round(identity, config, round_request(config))
    assert "unexpected classes ['necrosis']" in str(info.value) and "missing classes ['tumour']" in str(info.value)
    assert not (tmp_path / "state" / LEDGER_FILE).exists()  # nothing was trained or spent


def test_npz_with_out_of_range_labels_is_an_error_before_training(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    parts = {f"{s}_images": rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8) for s in ("train", "test")}
    parts.update(train_labels=np.array([0, 1] * 9 + [5, 1]), test_labels=np.zeros(20, int))
    np.savez(tmp_path / "site.npz", **parts)
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, tmp_path / "site.npz"), config, run_id=1)
    with pytest.raises(DataError, match=r"labels \[5\] outside"):
        run_round(identity, config, round_request(config, ["class-0", "class-1"]))


def test_empty_site_is_an_error_naming_its_empty_folders(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in CLASSES:
        (data / name).mkdir(parents=True)
    config = site_config()
    with pytest.raises(DataError, match="hold no files") as info:
        run_round(site_identity(deployed_node(tmp_path, data), config, 1), config, round_request(config))
    assert all(str(data / name) in str(info.value) for name in CLASSES) and "hold no files" in str(info.value)
    assert not (tmp_path / "state" / LEDGER_FILE).exists()  # nothing was trained or spent


def test_too_few_examples_for_a_dp_step_refuses_clearly(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", per_class=3)
    config = site_config(**{"min-site-examples": 10})
    result = run_round(site_identity(deployed_node(tmp_path, data), config, 1), config, round_request(config))
    assert result.status == "refused" and "fewer than min-site-examples=10" in result.reason


def test_missing_data_path_names_it(tmp_path: Path) -> None:
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, tmp_path / "no-such-export"), config, 1)
    with pytest.raises(DataError, match="no-such-export does not exist"):
        run_round(identity, config, round_request(config))


def test_missing_node_config_key_is_named() -> None:
    with pytest.raises(ConfigError, match="lacks epsilon-budget, state-dir"):
        site_identity({"data-path": "/d", "site-id": "x", "delta": 1e-5}, site_config(), 1)


def test_delta_above_one_over_ten_n_is_an_error(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data", per_class=20)
    config = site_config()
    identity = site_identity(deployed_node(tmp_path, data, delta=0.05), config, 1)
    with pytest.raises(ConfigError, match=r"at most 1/\(10·n\)"):
        run_round(identity, config, round_request(config))


def test_frozen_layers_from_other_weights_are_an_error(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data")
    config = site_config()
    request = round_request(config)
    request.frozen_fingerprint = "0" * 64
    with pytest.raises(RuntimeError, match="frozen layers differ"):
        run_round(site_identity(deployed_node(tmp_path, data), config, 1), config, request)


def test_deployed_site_refuses_non_private_training_unless_allowed(tmp_path: Path) -> None:
    data = site_tree(tmp_path / "data")
    config = site_config(dp=False)
    refused = run_round(site_identity(deployed_node(tmp_path, data), config, 1), config, round_request(config))
    assert refused.status == "refused" and "only trains under DP" in refused.reason
    allowed = site_identity(deployed_node(tmp_path, data, **{"allow-non-private": "true"}), config, 1)
    assert run_round(allowed, config, round_request(config)).status == "trained"
