"""Ghost clipping for convolutions: exact per-sample norms, same DP step semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from common.data.synthetic import make_synthetic
from common.model.dp_layers import ChannelAffine, channel_affine_norm_sample, conv2d_norm_sample
from common.model.network import POLICIES, apply_policy, build_resnet, get_trainable_state
from common.privacy.randomness import public_randomness
from common.training.local import train_local
from common.training.patient_dp import PatientPoissonSampler
from common.training.settings import TrainSettings
from common.training.steps import grad_sample_mode_for


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), 20),  # ResNet stem: T^2 > C*D branch
        (nn.Conv2d(16, 32, 3, stride=1, padding=1, bias=True), 6),  # deep layer: ghost-norm branch
        (nn.Conv2d(4, 6, 1, stride=2, bias=False), 9),  # downsample shortcut
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), 5),  # grouped: falls back to per-sample gradients
    ],
)
def test_conv_norm_sampler_equals_per_sample_gradient_norms(conv: nn.Conv2d, size: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, conv.in_channels, size, size)
    model = GradSampleModule(nn.Sequential(conv), batch_first=True, loss_reduction="sum")
    out = model(x)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    expected = {p: p.grad_sample.reshape(5, -1).norm(dim=1) for p in conv.parameters()}
    with torch.no_grad():
        norms = conv2d_norm_sample(conv, [x], weights)
    for param, norm in norms.items():
        assert torch.allclose(norm, expected[param], rtol=1e-4, atol=1e-5)


def test_channel_affine_norm_sampler_matches_its_grad_sampler() -> None:
    torch.manual_seed(0)
    layer = ChannelAffine(4)
    x, g = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    norms = channel_affine_norm_sample(layer, [x], g)
    assert torch.allclose(norms[layer.weight], torch.einsum("nchw,nchw->nc", x, g).norm(dim=1))
    assert torch.allclose(norms[layer.bias], g.sum(dim=(2, 3)).norm(dim=1))


def test_auto_mode_uses_ghost_clipping_only_where_convolutions_train() -> None:
    assert [grad_sample_mode_for(p) for p in POLICIES] == ["ghost", "ghost", "hooks", "hooks"]
    assert grad_sample_mode_for("full", "hooks") == "hooks"


@pytest.mark.slow  # 9 DP steps over layer4's 8.4 M values
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_dp_training_with_empty_poisson_batches_takes_every_step(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny data make empty Poisson batches likely; each still steps (pure noise, as the accountant assumes).

    3 patches, q = 1/3. The round's key is pinned (`public_randomness`), so which steps are empty is the same on
    every machine (AES-CTR and float64 comparisons); the test asserts that this key's draws hold an empty step
    rather than relying on the odds of one.
    """
    data = make_synthetic(3, 16, seed=0)
    model = apply_policy(build_resnet("resnet18", 4, None, 0), "last-block")
    before = get_trainable_state(model)
    sizes: list[int] = []
    step_for = PatientPoissonSampler.step_for
    monkeypatch.setattr(PatientPoissonSampler, "step_for", lambda self, p: sizes.append(len(p)) or step_for(self, p))
    settings = TrainSettings(epochs=3, batch_size=1, lr=0.05, momentum=0.0, randomness=public_randomness("1"), dp=True,
                             noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
                             min_records_per_step=1)  # q from the batch size alone: 1/3, not 1 (3 records < 16)
    outcome = train_local(model, data, settings)
    assert outcome.steps == 3 * 3 and outcome.history == [(1.0, 1 / 3, 9)]
    assert len(sizes) == 9 and 0 in sizes and max(sizes) > 0  # this key's draws: empty and non-empty steps
    after = get_trainable_state(model)
    assert all(np.isfinite(v).all() for v in after.values())
    assert any(not np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # DP steps on a full ResNet-18, twice
def test_ghost_and_hooks_clip_identically() -> None:
    """Without noise, one DP step is the same update in both modes (same clipping)."""
    data = make_synthetic(32, 16, seed=2)
    results = {}
    for mode in ("hooks", "ghost"):
        model = apply_policy(build_resnet("resnet18", 4, None, 0), "full")
        torch.manual_seed(3)
        settings = TrainSettings(epochs=1, batch_size=32, lr=0.1, momentum=0.0, randomness=public_randomness("3"), dp=True,
                                 noise_multiplier=0.0, max_grad_norm=0.5, grad_sample_mode=mode, augment=False)
        train_local(model, data, settings)
        results[mode] = get_trainable_state(model)
    for name in results["hooks"]:
        assert np.allclose(results["hooks"][name], results["ghost"][name], rtol=1e-3, atol=1e-6), name
