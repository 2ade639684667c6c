"""center-head: the sites train the head as W·(f - m) + b' on the server's mean m, the same function as W·f + b."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from client.identity import SiteIdentity
from client.round_types import RoundRequest
from client.site import run_round
from common.config.run_config import ConfigError, RunConfig
from common.data.sources import server_validation_set
from common.model.head_centering import centred_head, centring_applies, feature_mean, from_bytes, to_bytes
from common.model.inputs import normalise
from server.app import _starting_point, _train_config
from server.run_store import RunStore
from tests.conftest import tiny_run_config


def _net() -> nn.Module:
    """A body whose features share a large positive mean (a ReLU then a shift), and a linear head."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU())
    net.fc = nn.Linear(6, 3)
    return net


def test_the_function_is_the_same_before_inside_and_after_and_the_head_is_restored() -> None:
    net, x = _net(), torch.randn(8, 3, 2, 2)
    before, weight, bias = net(x), net.fc.weight.detach().clone(), net.fc.bias.detach().clone()
    mean = feature_mean(net, x)
    with centred_head(net, mean):
        inside = net(x)
        assert not torch.allclose(net.fc.bias, bias)  # b' = b + W·m
    assert torch.allclose(inside, before, atol=1e-5) and torch.allclose(net(x), before, atol=1e-6)
    assert torch.equal(net.fc.weight, weight) and torch.allclose(net.fc.bias, bias, atol=1e-6)
    assert not net.fc._forward_pre_hooks  # the hook is gone
    with pytest.raises(RuntimeError, match="boom"), centred_head(net, mean):
        raise RuntimeError("boom")
    assert torch.allclose(net.fc.bias, bias, atol=1e-6) and not net.fc._forward_pre_hooks  # restored on errors too


def test_feature_mean_is_the_mean_of_the_heads_input_brute_force() -> None:
    net, x = _net(), torch.randn(10, 3, 2, 2)
    expected = net.body(x).mean(dim=0).detach().numpy()
    assert np.allclose(feature_mean(net, x, batch_size=3), expected, atol=1e-6)
    assert np.array_equal(from_bytes(to_bytes(expected)), expected.astype(np.float32))
    with pytest.raises(ValueError, match="no images"):
        feature_mean(net, x[:0])
    with pytest.raises(ValueError, match="a head input mean has 6 values"), centred_head(net, np.zeros(5)):
        pass


def test_opacus_per_record_gradients_inside_are_those_of_the_centred_head() -> None:
    """What DP-SGD clips: the head's per-record gradient (p - y) ⊗ (f - m), not (p - y) ⊗ f."""
    net, x, y = _net(), torch.randn(5, 3, 2, 2), torch.tensor([0, 1, 2, 0, 1])
    mean = feature_mean(net, x)
    features = net.body(x).detach()
    with centred_head(net, mean):
        private = GradSampleModule(net, batch_first=True, loss_reduction="sum")
        nn.functional.cross_entropy(private(x), y, reduction="sum").backward()
        rows = net.fc.weight.grad_sample.detach()
        probs = torch.softmax(private(x), dim=1).detach()
        private._close()
    error = probs - nn.functional.one_hot(y, 3)
    centred = torch.einsum("nk,nd->nkd", error, features - torch.from_numpy(mean))
    assert torch.allclose(rows, centred, atol=1e-5)
    assert not torch.allclose(rows, torch.einsum("nk,nd->nkd", error, features), atol=1e-2)


def test_server_sends_the_mean_over_its_validation_images_and_a_site_trains_with_it(tmp_path: Path) -> None:
    mapping = tiny_run_config(**{"num-server-rounds": 1, "output-dir": str(tmp_path / "runs")})
    config = RunConfig.from_mapping(mapping)
    assert config.center_head == "auto"  # the default; from scratch (tiny configs), so centring applies
    store = RunStore(tmp_path / "runs" / "run-1")
    start = _starting_point(config, store, 1)
    validation, _ = server_validation_set(config)
    assert validation is not None
    images = normalise(torch.from_numpy(validation.images).permute(0, 3, 1, 2))
    with torch.no_grad():
        inputs = []
        handle = start.model.fc.register_forward_pre_hook(lambda _m, args: inputs.append(args[0]))
        start.model(images)
        handle.remove()
    assert np.allclose(from_bytes(start.head_input_mean), torch.cat(inputs).mean(dim=0).numpy(), atol=1e-4)
    assert store.read_json("run.json")["head_centering"] == {"setting": "auto", "applied": True,
                                                             "validation_images": len(validation)}
    sent = _train_config(start, store)["head-input-mean"]
    identity = SiteIdentity("site-0", False, tmp_path / "site", 32.0, 1e-4, partition_id=0, num_partitions=2)
    result = run_round(identity, config, RoundRequest(1, 1, start.state, start.classes, start.fingerprint,
                                                      head_input_mean=sent))
    assert result.status == "trained" and all(np.isfinite(v).all() for v in result.update.values())
    off = RunConfig.from_mapping({**mapping, "center-head": "off"})
    assert _starting_point(off, RunStore(tmp_path / "runs" / "run-2"), 2).head_input_mean is None
    assert "head-input-mean" not in _train_config(_starting_point(off, RunStore(tmp_path / "runs" / "run-3"), 3),
                                                  RunStore(tmp_path / "runs" / "run-3"))


def test_the_report_says_how_the_head_was_trained() -> None:
    from server.report.compose import describe_head_centering

    centred = describe_head_centering({}, {"setting": "auto", "applied": True, "validation_images": 200}, "none")
    assert "centred features" in centred and "200 validation images" in centred and "no privacy cost" in centred
    assert "center-head = off" in describe_head_centering({}, {"setting": "off", "applied": False}, "none")
    pretrained = describe_head_centering({}, {"setting": "auto", "applied": False, "validation_images": 0}, "file")
    assert "from-scratch starts only" in pretrained and "did not help on LC25000" in pretrained
    assert "no validation images" in describe_head_centering({}, {"setting": "on", "applied": False}, "none")
    assert "no center-head" in describe_head_centering({}, None, "none")  # a run from before the key


def test_auto_centres_from_scratch_starts_only_and_the_key_is_checked() -> None:
    assert [centring_applies(s, pretrained) for s in ("auto", "on", "off") for pretrained in (False, True)] == [
        True, False, True, True, False, False]
    with pytest.raises(ConfigError, match="center-head 'yes' is unknown; valid values: auto, on, off"):
        RunConfig.from_mapping({"center-head": "yes"})
