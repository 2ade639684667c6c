"""The DP-compatible ResNet: same function as torchvision, trainable by Opacus hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import PrivacyEngine
from torch import nn

from common.model.dp_layers import ChannelAffine, FrozenBatchNorm2d, FrozenStatsBatchNorm
from common.model.network import (
    POLICIES,
    apply_policy,
    build_resnet,
    frozen_fingerprint,
    get_trainable_state,
    set_trainable_state,
    trainable_names,
)
from tests.conftest import randomised_torchvision


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_output_equals_pretrained_torchvision(arch: str) -> None:
    reference = randomised_torchvision(arch, seed=1)
    model = build_resnet(arch, 1000, reference.state_dict(), seed=0)
    model.fc.load_state_dict(reference.fc.state_dict())  # the head is new by design; copy it to compare
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_conversion_removes_batchnorm_and_inplace_ops() -> None:
    model = build_resnet("resnet18", 3, None, seed=0)
    modules = list(model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in modules)
    assert sum(isinstance(m, FrozenStatsBatchNorm) for m in modules) == 20
    # Opacus refuses trainable layers with buffers: statistics and trainables are apart.
    for m in modules:
        if isinstance(m, FrozenBatchNorm2d):
            assert not list(m.parameters()) and len(list(m.buffers())) == 2
        if isinstance(m, ChannelAffine):
            assert not list(m.buffers())


@pytest.mark.parametrize("policy", POLICIES)
def test_dp_step_runs_in_opacus_hooks_mode(policy: str) -> None:
    torch.manual_seed(0)
    model = apply_policy(build_resnet("resnet18", 3, None, seed=0), policy).train()
    before = {k: v.copy() for k, v in get_trainable_state(model).items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 3, (16,)))
    loader = torch.utils.data.DataLoader(data, batch_size=8)
    engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_optimizer, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
        grad_sample_mode="hooks",
    )
    images, labels = next(iter(dp_loader))
    nn.functional.cross_entropy(dp_model(images), labels).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad_sample is not None for p in trainable)  # per-sample gradients were computed
    dp_optimizer.step()
    after = get_trainable_state(model)
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    assert engine.accountant.get_epsilon(delta=1e-5) > 0


def test_policies_select_the_documented_tensors() -> None:
    names = {p: trainable_names(apply_policy(build_resnet("resnet18", 3, None, 0), p)) for p in POLICIES}
    all_params = [n for n, _ in build_resnet("resnet18", 3, None, 0).named_parameters()]
    assert names["full"] == all_params
    assert names["head"] == ["fc.weight", "fc.bias"]
    assert all(n.startswith(("layer4.", "fc.")) for n in names["last-block"])
    assert any(n.startswith("layer4.") and "conv" in n for n in names["last-block"])
    assert all(".affine." in n or n.startswith("fc.") for n in names["norm-head"])
    assert len(names["norm-head"]) == 2 * 20 + 2


def test_trainable_state_roundtrip_and_validation() -> None:
    model = apply_policy(build_resnet("resnet18", 4, None, 0), "norm-head")
    state = get_trainable_state(model)
    changed = {k: v + 1.0 for k, v in state.items()}
    set_trainable_state(model, changed)
    assert all(np.array_equal(get_trainable_state(model)[k], changed[k]) for k in state)
    with pytest.raises(ValueError, match="missing"):
        set_trainable_state(model, {k: v for k, v in list(state.items())[1:]})
    wrong = dict(state)
    wrong["fc.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match="shape"):
        set_trainable_state(model, wrong)


def test_frozen_layers_are_identical_across_builds_and_differ_across_seeds() -> None:
    a = apply_policy(build_resnet("resnet18", 3, None, seed=5), "norm-head")
    b = apply_policy(build_resnet("resnet18", 3, None, seed=5), "norm-head")
    c = apply_policy(build_resnet("resnet18", 3, None, seed=6), "norm-head")
    assert frozen_fingerprint(a) == frozen_fingerprint(b) != frozen_fingerprint(c)


def test_scratch_statistics_keep_activations_at_unit_scale() -> None:
    """Data-free BN statistics: features reaching the head are O(1), not exploding."""
    model = build_resnet("resnet18", 3, None, seed=0)
    features = {}
    model.avgpool.register_forward_hook(lambda m, i, o: features.setdefault("x", o))
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    assert 0.05 < features["x"].std().item() < 20


def test_unknown_arch_and_policy_name_the_valid_values() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet34, resnet50"):
        build_resnet("vgg16", 3, None, 0)
    with pytest.raises(ValueError, match="full, last-block, norm-head, head"):
        apply_policy(build_resnet("resnet18", 3, None, 0), "everything")
