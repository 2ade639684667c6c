"""bn-statistics=public: BatchNorm statistics re-estimated on the server's public share, sent to the sites."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.identity import SiteIdentity
from client.round_types import RoundRequest
from client.site import run_round
from common.config.run_config import ConfigError, RunConfig
from common.data.sources import public_share
from common.model.bn_statistics import estimate_statistics, frozen_batchnorms, pack, unpack
from common.model.inputs import normalise
from common.model.network import frozen_fingerprint, make_dp_compatible
from common.paths import BN_STATISTICS_FILE
from server.app import _starting_point, _train_config
from server.run_store import RunStore
from tests.conftest import tiny_run_config


def test_config_key_defaults_to_the_backbone_and_public_needs_a_public_share() -> None:
    assert RunConfig.from_mapping(tiny_run_config()).bn_statistics == "backbone"
    with pytest.raises(ConfigError, match="bn-statistics 'site' is unknown; valid values: backbone, public"):
        RunConfig.from_mapping(tiny_run_config(**{"bn-statistics": "site"}))
    with pytest.raises(ConfigError, match="public-fraction > 0"):
        RunConfig.from_mapping(tiny_run_config(**{"bn-statistics": "public"}))
    assert RunConfig.from_mapping(tiny_run_config(**{"bn-statistics": "public", "public-fraction": 0.2}))


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(3, 5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return make_dp_compatible(net.eval())


def test_estimates_are_each_layers_input_statistics_over_the_public_images_brute_force() -> None:
    net = _tiny_net()
    images = torch.randn(13, 3, 9, 9) * 2 + 1
    estimate_statistics(net, images, batch_size=5)  # batches of 5, 5, 3: sums, not means of batch means
    conv1, bn1, relu, conv2, bn2 = net
    x1 = conv1(images).double()
    assert torch.allclose(bn1.norm.running_mean.double(), x1.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn1.norm.running_var.double(), x1.var(dim=(0, 2, 3), unbiased=False), atol=1e-5)
    # the second layer sees the first already re-estimated (its trained scale/shift kept)
    x2 = conv2(relu(bn1(conv1(images)))).double()
    assert torch.allclose(bn2.norm.running_mean.double(), x2.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn2.norm.running_var.double(), x2.var(dim=(0, 2, 3), unbiased=False), atol=1e-5)


def test_every_resnet_batchnorm_then_normalises_the_public_images_to_zero_mean_unit_variance() -> None:
    from torchvision import models

    torch.manual_seed(1)
    net = make_dp_compatible(models.resnet18(weights=None).eval())
    images = torch.rand(24, 3, 32, 32) * 3 - 1
    inputs: dict[int, torch.Tensor] = {}
    layers = frozen_batchnorms(net)
    assert len(layers) == 20 and sum(layer.num_features for layer in layers) == 4800
    estimate_statistics(net, images, batch_size=10)
    hooks = [layer.register_forward_hook(lambda m, _, out, k=k: inputs.__setitem__(k, out.detach()))
             for k, layer in enumerate(layers)]
    with torch.no_grad():
        net(images)
    for hook in hooks:
        hook.remove()
    for k, out in inputs.items():  # the FrozenBatchNorm2d output, before the trained scale/shift
        assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-3), k
        var = out.var(dim=(0, 2, 3), unbiased=False)
        live = var > 1e-6  # channels that are constant on these images (dead ReLUs) normalise to 0
        assert torch.allclose(var[live], torch.ones(int(live.sum())), atol=2e-3), k


def test_pack_unpack_round_trip_and_refuse_another_models_statistics() -> None:
    source, target = _tiny_net(), _tiny_net()
    estimate_statistics(source, torch.randn(6, 3, 9, 9))
    assert frozen_fingerprint(source) != frozen_fingerprint(target)
    blob = pack(source)
    assert len(blob) == 2 * 4 * (4 + 5)
    unpack(target, blob)
    assert frozen_fingerprint(source) == frozen_fingerprint(target)
    with pytest.raises(ValueError, match="do not fit this model"):
        unpack(target, blob + b"\0" * 8)
    bad = np.frombuffer(blob, dtype="<f4").copy()
    bad[-1] = -1.0  # a negative variance
    with pytest.raises(ValueError, match="variances >= 0"):
        unpack(target, bad.astype("<f4").tobytes())


def test_server_estimates_on_its_public_share_and_a_site_trains_with_exactly_those(tmp_path: Path) -> None:
    mapping = tiny_run_config(**{"bn-statistics": "public", "public-fraction": 0.2, "num-server-rounds": 1,
                                 "dp": False, "output-dir": str(tmp_path / "runs")})
    config = RunConfig.from_mapping(mapping)
    store = RunStore(tmp_path / "runs" / "run-1")
    start = _starting_point(config, store, 1)
    assert start.bn_statistics is not None and (store.root / BN_STATISTICS_FILE).read_bytes() == start.bn_statistics
    # what the server holds: the public share's statistics (first layer brute force), not the backbone's
    public = public_share(config)
    x = start.model.conv1(normalise(torch.from_numpy(public.images).permute(0, 3, 1, 2))).double()
    first = frozen_batchnorms(start.model)[0]
    assert torch.allclose(first.running_mean.double(), x.mean(dim=(0, 2, 3)), atol=1e-4)
    assert store.read_json("run.json")["bn_statistics"] == {"setting": "public", "public_images": len(public)}
    instructions = _train_config(start, store)
    identity = SiteIdentity("site-0", False, tmp_path / "site", 32.0, 1e-4, partition_id=0, num_partitions=2)
    request = RoundRequest(1, 1, start.state, start.classes, start.fingerprint,
                           bn_statistics=instructions["bn-statistics"])
    assert run_round(identity, config, request).status == "trained"  # fingerprint matched the server's
    # without the statistics (or with the backbone's) the site stops before training
    with pytest.raises(Exception, match="sent no BatchNorm statistics"):
        run_round(identity, config, RoundRequest(1, 1, start.state, start.classes, start.fingerprint))
    backbone = RunConfig.from_mapping({**mapping, "bn-statistics": "backbone"})
    with pytest.raises(Exception, match="frozen layers differ"):
        run_round(identity, backbone, RoundRequest(1, 1, start.state, start.classes, start.fingerprint))


def test_the_report_says_where_the_statistics_came_from_and_when_a_backbone_is_a_risk() -> None:
    from server.report.compose import describe_bn_statistics

    backbone = describe_bn_statistics({"bn-statistics": "backbone"}, "file", None)
    assert "another domain" in backbone and "bn-statistics = public" in backbone
    assert "noise" in describe_bn_statistics({}, "none", None)  # runs from before the key: the backbone's
    public = describe_bn_statistics({"bn-statistics": "public", "dataset": "lc25000-lung", "public-fraction": 0.2},
                                    "file", {"setting": "public", "public_images": 2406})
    assert "2406 images" in public and "no privacy cost" in public and "policy full" not in public
    full = describe_bn_statistics({"bn-statistics": "public", "policy": "full"}, "file", None)
    assert "with policy full, a backbone from another domain ended below training from scratch" in full
    assert "with full, do not use such a backbone at all" in describe_bn_statistics({"policy": "full"}, "file", None)


def test_the_statistics_sent_count_in_the_bytes_each_site_receives(flower_process: None) -> None:
    from flwr.app import ConfigRecord

    from common.wire.records import record_bytes, to_array_record
    from server.screening import UpdateScreen
    from server.strategy import make_strategy
    from tests.helpers.flower_messages import BOUND, REFERENCE, START, ThreeNodes, mixed_replies

    config = RunConfig.from_mapping({"min-train-nodes": 1, "min-available-nodes": 1})
    strategy = make_strategy(config, UpdateScreen(REFERENCE, dp_bound=BOUND))
    blob = bytes(8 * 4800)
    list(strategy.configure_train(1, to_array_record(START), ConfigRecord({"classes": ["a"], "bn-statistics": blob}),
                                  ThreeNodes()))
    strategy.aggregate_train(1, mixed_replies())
    assert {r.bytes_down for r in strategy.replies[1]} == {record_bytes(to_array_record(START)) + len(blob)}
