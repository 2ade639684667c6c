"""Patient-level DP-SGD (common.training.patient_dp): whole patients sampled, per-patient clipping, exact norms."""

from __future__ import annotations

import copy
import math
from functools import cache

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.config.choices import DEFAULT_MIN_RECORDS_PER_STEP
from common.data.imageset import ImageSet
from common.data.synthetic import make_synthetic
from common.model.dp_layers import ChannelAffine
from common.model.network import apply_policy, build_resnet, get_trainable_state
from common.privacy.randomness import public_randomness
from common.training.dp_engine import site_accountant
from common.training.local import train_local
from common.training.patient_dp import (
    PatientDPOptimizer,
    PatientGhostClippingModule,
    PatientPoissonSampler,
    PatientStep,
    make_private_per_patient,
    patient_counts,
    patient_index,
)
from common.training.patient_dp.group_norms import GROUP_NORM_SAMPLERS, PatchGroups
from common.training.settings import TrainSettings
from common.training.steps import epoch_steps, grad_sample_mode_for

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")

# Eight patches of three patients, deliberately not grouped in the batch.
PATIENT_OF_ROW = torch.tensor([2, 0, 1, 0, 2, 2, 0, 2])


# -- helpers ----------------------------------------------------------------------------------
@cache
def _resnet18(classes: int) -> nn.Module:
    return build_resnet("resnet18", classes, None, 0)


def resnet18(policy: str, classes: int = 4) -> nn.Module:
    """A real torchvision ResNet-18 (DP-compatible), built once per test module and copied."""
    return apply_policy(copy.deepcopy(_resnet18(classes)), policy)


def brute_force_patient_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
    """Per patient, by a loop: the gradient of the summed loss of its patches (the thing clipped)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for patient in range(int(index.max()) + 1):
        rows = index == patient
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[rows]), y[rows], reduction="sum").backward()
        grads.append([p.grad.detach().clone() for p in params])
    model.zero_grad(set_to_none=True)
    return grads


def flat_norm(tensors) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors)))


def mechanism_step(model: nn.Module, x, y, index, mode: str, max_grad_norm: float, sigma: float = 0.0):
    """One patient-level DP step through the real Opacus objects: (per-patient norms, clipped sum before
    noise, p.grad after noise and scaling, expected patients)."""
    params = [p for p in model.parameters() if p.requires_grad]
    accountant, keys = site_accountant(None), public_randomness("5")
    sampler = PatientPoissonSampler(index.numpy(), batch_size=4, max_patches_per_patient=64, stream=keys.stream("sampling"),
                                    min_records_per_step=1)  # q from the batch size alone: 3 patients
    private = make_private_per_patient(
        accountant, keys.stream("noise"), module=model, optimizer=torch.optim.SGD(params, lr=1.0), criterion=nn.CrossEntropyLoss(),
        sampler=sampler, noise_multiplier=sigma, max_grad_norm=max_grad_norm, grad_sample_mode=mode,
    )
    try:
        private.optimizer.zero_grad(set_to_none=True)
        private.begin_step(PatientStep(torch.arange(len(index)), PatchGroups(index), torch.arange(int(index.max()) + 1)))
        logits = private.module(x)
        if len(y):
            private.criterion(logits, y).backward()
        else:
            (logits.sum() * 0.0).backward()
        assert private.optimizer.pre_step()
        if mode == "ghost":
            norms = private.module.per_sample_gradient_norms if len(y) else torch.zeros(0)
        else:  # PatientDPOptimizer left one grad_sample row per patient
            norms = torch.stack([p.grad_sample.reshape(len(p.grad_sample), -1).norm(dim=1) for p in params], 1).norm(dim=1)
        clipped = [p.summed_grad.detach().clone() for p in params]
        noised = [p.grad.detach().clone() for p in params]
        return norms.detach(), clipped, noised, sampler.expected_patients, accountant.history
    finally:
        private.module.remove_hooks()
        for p in model.parameters():
            for attr in ("grad_sample", "_forward_counter", "_norm_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)


def tiny_model() -> nn.Module:
    """Every layer type a sampler is registered for, plus GroupNorm (no group norm sampler: fallback)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), ChannelAffine(4), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, bias=False),
        nn.GroupNorm(2, 6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3),
    )


def check_clipped_sum(norms, clipped, brute, max_grad_norm: float) -> None:
    expected_norms = torch.tensor([flat_norm(g) for g in brute])
    assert torch.allclose(norms.double(), expected_norms.double(), rtol=1e-4, atol=1e-6), (norms, expected_norms)
    factors = [min(1.0, max_grad_norm / (n + 1e-6)) for n in expected_norms.tolist()]
    assert any(f < 1 for f in factors) and any(f == 1 for f in factors), "C must clip some patients and not others"
    for k, total in enumerate(clipped):
        expected = sum(f * g[k] for f, g in zip(factors, brute))
        assert torch.allclose(total, expected, rtol=1e-4, atol=1e-6)


# -- exact per-patient norms, layer by layer ---------------------------------------------------
def _gram_route(positions: int, width: int, channels: int, inputs: int) -> bool:
    return width * positions * (channels + inputs) <= channels * inputs


@pytest.mark.parametrize(
    ("layer", "shape", "gram"),
    [
        (nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False), (3, 20, 20), False),  # ResNet stem
        (nn.Conv2d(16, 32, 3, stride=1, padding=1, bias=True), (16, 2, 2), True),  # deep layer: Gram blocks
        (nn.Conv2d(4, 6, 1, stride=2, bias=False), (4, 9, 9), False),  # downsample shortcut
        (nn.Conv2d(4, 6, 3, padding=1, groups=2), (4, 5, 5), None),  # grouped: per-sample gradients summed
        (nn.Linear(20, 3), (20,), False),  # ResNet head
        (nn.Linear(16, 16), (2, 16), True),  # positions, Gram blocks
        (nn.Linear(4, 2), (5, 4), False),  # positions, direct
        (ChannelAffine(5), (5, 4, 4), None),
    ],
    ids=["stem-conv", "deep-conv", "shortcut-conv", "grouped-conv", "linear", "linear-seq-gram", "linear-seq", "affine"],
)
def test_group_norm_samplers_equal_brute_force(layer: nn.Module, shape: tuple[int, ...], gram: bool | None) -> None:
    torch.manual_seed(1)
    if isinstance(layer, ChannelAffine):
        with torch.no_grad():
            layer.weight.normal_()
            layer.bias.normal_()
    x = torch.randn(len(PATIENT_OF_ROW), *shape)
    out = layer(x)
    backprops = torch.randn_like(out)
    groups = PatchGroups(PATIENT_OF_ROW)
    if gram is not None:  # the test covers both routes of `_grouped_product_norms`
        positions = out[0, 0].numel() if isinstance(layer, nn.Conv2d) else int(np.prod(shape[:-1]))
        channels = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
        inputs = layer.weight[0].numel()
        assert _gram_route(positions, groups.width, channels, inputs) is gram
    with torch.no_grad():
        norms = GROUP_NORM_SAMPLERS[type(layer)](layer, [x], backprops, groups)
    assert set(norms) == set(layer.parameters())
    for patient in range(groups.num_groups):
        rows = PATIENT_OF_ROW == patient
        layer.zero_grad(set_to_none=True)
        (layer(x[rows]) * backprops[rows]).sum().backward()
        for param, norm in norms.items():
            assert torch.allclose(norm[patient], param.grad.norm(), rtol=1e-4, atol=1e-5), (patient, param.shape)


# -- the DP step: per-patient clipping through Opacus ------------------------------------------
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_clipped_patient_sums_equal_brute_force_and_noise_scales_by_expected_patients(mode: str) -> None:
    model = tiny_model()
    torch.manual_seed(2)
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    brute = brute_force_patient_gradients(model, x, y, PATIENT_OF_ROW)
    c = sorted(flat_norm(g) for g in brute)[1]  # the middle patient's norm: clips one, not another
    norms, clipped, noised, expected, history = mechanism_step(model, x, y, PATIENT_OF_ROW, mode, c)
    check_clipped_sum(norms, clipped, brute, c)
    assert expected == pytest.approx(1.5)  # q * patients, q = 1 / min(3 patients, ceil(8 patches / batch 4))
    for total, grad in zip(clipped, noised):  # sigma = 0: divided by expected patients, not patches
        assert torch.allclose(grad * expected, total, rtol=1e-6, atol=1e-7)
    assert history == [(0.0, 0.5, 1)]


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_no_patient_contributes_more_than_c(mode: str) -> None:
    """Each patient alone in a step: its clipped contribution (before noise) has norm <= C."""
    model = tiny_model()
    torch.manual_seed(3)
    x, y = torch.randn(8, 3, 8, 8) * 3, torch.randint(0, 3, (8,))
    brute = brute_force_patient_gradients(model, x, y, PATIENT_OF_ROW)
    c = 0.05
    assert all(flat_norm(g) > c for g in brute)
    for patient in range(3):
        rows = PATIENT_OF_ROW == patient
        norms, clipped, _, _, _ = mechanism_step(model, x[rows], y[rows], torch.zeros(int(rows.sum()), dtype=torch.int64),
                                                 mode, c)
        assert float(norms[0]) == pytest.approx(flat_norm(brute[patient]), rel=1e-4)
        assert flat_norm(clipped) <= c * (1 + 1e-5)
        assert flat_norm(clipped) == pytest.approx(c, rel=1e-4)  # clipped, not dropped


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_empty_step_is_pure_noise_of_sigma_c_over_expected_patients(mode: str) -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(100, 60))
    sigma, c = 2.0, 0.5
    norms, clipped, noised, expected, history = _empty_step(model, mode, sigma, c)
    assert len(norms) == 0 and all(float(t.abs().max()) == 0 for t in clipped)
    noise = torch.cat([g.flatten() for g in noised]) * expected
    # 5.3 standard errors of the sample's std and mean: a correct mechanism fails with odds < 1e-6 whatever the
    # generator draws, while noise scaled by expected patches (2) instead of patients (1) is 100 errors off
    n, z = noise.numel(), 5.3
    assert abs(float(noise.std()) - sigma * c) < z * sigma * c / math.sqrt(2 * (n - 1))
    assert abs(float(noise.mean())) < z * sigma * c / math.sqrt(n)
    assert history == [(sigma, 0.25, 1)]


def _empty_step(model: nn.Module, mode: str, sigma: float, c: float):
    """An empty step over 4 patients of 2 patches (q = 1/4: 1 patient, 2 patches per step expected)."""
    params = [p for p in model.parameters() if p.requires_grad]
    accountant, keys = site_accountant(None), public_randomness("6")
    sampler = PatientPoissonSampler(np.repeat(np.arange(4), 2), batch_size=2, max_patches_per_patient=2,
                                    stream=keys.stream("sampling"), min_records_per_step=1)
    assert (sampler.expected_patients, sampler.expected_patches) == (1.0, 2.0)
    private = make_private_per_patient(
        accountant, keys.stream("noise"), module=model, optimizer=torch.optim.SGD(params, lr=1.0),
        criterion=nn.CrossEntropyLoss(), sampler=sampler, noise_multiplier=sigma, max_grad_norm=c, grad_sample_mode=mode,
    )
    try:
        private.optimizer.zero_grad(set_to_none=True)
        private.begin_step(sampler.step_for(torch.zeros(0, dtype=torch.int64)))
        (private.module(torch.zeros(0, 100)).sum() * 0.0).backward()
        assert private.optimizer.pre_step()
        norms = torch.zeros(0) if mode == "ghost" else params[0].grad_sample.flatten(1).norm(dim=1)
        return (norms, [p.summed_grad.clone() for p in params], [p.grad.clone() for p in params],
                sampler.expected_patients, accountant.history)
    finally:
        private.module.remove_hooks()


def test_each_mode_uses_its_opacus_classes() -> None:
    model = tiny_model()
    keys = public_randomness("0")
    noise = keys.stream("noise")
    sampler = PatientPoissonSampler(np.arange(4), 2, 1, keys.stream("sampling"))
    for mode, module_type, optimizer_type in [("hooks", None, PatientDPOptimizer), ("ghost", PatientGhostClippingModule, None)]:
        private = make_private_per_patient(
            site_accountant(None), noise, module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            criterion=nn.CrossEntropyLoss(), sampler=sampler, noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
        )
        assert (module_type is None) or isinstance(private.module, module_type)
        assert (optimizer_type is None) or isinstance(private.optimizer, optimizer_type)
        assert private.optimizer.noise_stream is noise and private.optimizer.generator is None
        assert private.optimizer.expected_batch_size == sampler.expected_patients
        private.remove_sanitizers()
        private.module.remove_hooks()
    with pytest.raises(TypeError, match="secret stream"):  # a torch generator (Mersenne Twister) is refused
        PatientPoissonSampler(np.arange(4), 2, 1, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="secret stream"):
        make_private_per_patient(site_accountant(None), torch.Generator(), module=model,
                                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
                                 sampler=sampler, noise_multiplier=1.0, max_grad_norm=1.0)


# -- each policy on a real torchvision ResNet-18 -------------------------------------------------
@pytest.mark.parametrize("policy", ["head", "norm-head", "last-block", "full"])
def test_resnet18_per_patient_norms_equal_brute_force(policy: str) -> None:
    model = resnet18(policy, 3).train()
    torch.manual_seed(5)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 3, (8,))
    brute = brute_force_patient_gradients(model, x, y, PATIENT_OF_ROW)
    c = sorted(flat_norm(g) for g in brute)[1]
    mode = grad_sample_mode_for(policy)  # what sites use: ghost where convolutions train
    norms, clipped, _, _, _ = mechanism_step(model, x, y, PATIENT_OF_ROW, mode, c)
    check_clipped_sum(norms, clipped, brute, c)


# -- sampling over patients ----------------------------------------------------------------------
def test_sampler_takes_whole_patients_up_to_the_cap() -> None:
    sizes = [1, 3, 4, 5, 9, 20]
    groups = np.repeat([f"p{k}" for k in range(len(sizes))], sizes)
    rng = np.random.default_rng(0)
    groups = groups[rng.permutation(len(groups))]  # a patient's patches scattered through the data
    patient = patient_index(groups)
    cap = 4
    sampler = PatientPoissonSampler(patient, batch_size=8, max_patches_per_patient=cap,
                                    stream=public_randomness("1").stream("sampling"), min_records_per_step=1)
    assert patient_counts(groups, cap) == (6, 1 + 3 + 4 * 4)
    assert (sampler.steps, sampler.sample_rate) == epoch_steps(6, 20, 8, 1) == (3, 1 / 3)
    seen_of_big = set()
    inclusions = np.zeros(6)
    steps = 0
    for _ in range(300):
        for step in sampler:
            steps += 1
            rows = step.indices.numpy()
            assert len(set(rows)) == len(rows)
            in_step = sorted(set(patient[rows]))
            assert in_step == sorted(step.patients.tolist())
            for k in range(6):
                taken = int((patient[rows] == k).sum())
                assert taken in (0, min(sizes[k], cap))  # all in (up to the cap) or all out
                inclusions[k] += taken > 0
            assert np.array_equal(patient[rows], step.patients.numpy()[step.groups.index.numpy()])
            seen_of_big.update(rows[patient[rows] == 5].tolist())
    assert steps == 900
    assert seen_of_big == set(np.flatnonzero(patient == 5).tolist())  # the cap picks among all 20 patches
    # Poisson rate q for every patient, within 5.3 standard errors (odds of a false failure < 6 x 1.2e-7)
    assert np.all(np.abs(inclusions / steps - 1 / 3) < 5.3 * math.sqrt(1 / 3 * 2 / 3 / steps))


def test_patient_sampling_rate_rule() -> None:
    """From the batch size alone (min-records-per-step = 1), as before issue 23."""
    assert epoch_steps(50, 1000, 64, 1) == (16, 1 / 16)  # q * usable patches <= batch
    assert epoch_steps(3, 300, 64, 1) == (3, 1 / 3)  # big patients: one per step expected
    assert epoch_steps(10, 10, 64, 1) == (1, 1.0)
    assert epoch_steps(93, 93, 1, 1)[0] == 92  # int(1/q), as Opacus' sampler takes it
    assert epoch_steps(1000, 1000, 64, 1) == (16, 1 / 16)  # patches (patients of one patch): q = 1/ceil(n/batch)
    with pytest.raises(ValueError, match="needs at least one record"):
        epoch_steps(0, 0, 64)


def test_steps_are_planned_for_at_least_min_records_per_step() -> None:
    """Issue 23: a step expects at least `min-records-per-step` records (16 by default), even past the batch size.

    The quick LC25000 site: 47 patients of 16 usable patches; a 64-patch batch would hold 4 patients (q = 1/12)."""
    assert epoch_steps(47, 752, 64, 1) == (12, 1 / 12)
    steps, q = epoch_steps(47, 752, 64)  # the default: 47 // 16 = 2 steps, 23.5 patients expected per step
    assert (steps, q) == (2, 1 / 2) and q * 47 >= DEFAULT_MIN_RECORDS_PER_STEP
    assert epoch_steps(10, 160, 64) == (1, 1.0)  # fewer records than the minimum: every record every step
    assert epoch_steps(1000, 1000, 64) == (16, 1 / 16)  # patches in batches of 64 >= 16: unchanged
    assert epoch_steps(1000, 1000, 8) == (62, 1 / 62)  # patches in batches of 8: 16 per step instead
    for records, usable, batch in [(47, 752, 64), (200, 3000, 32), (5, 40, 2), (1000, 1000, 4)]:
        _, q = epoch_steps(records, usable, batch)
        assert q * records >= min(records, DEFAULT_MIN_RECORDS_PER_STEP) * (1 - 1e-12)
    with pytest.raises(ValueError, match="min-records-per-step"):
        epoch_steps(10, 10, 4, 0)


# -- through train_local ---------------------------------------------------------------------------
def _patients(n: int, seed: int, per_patient: int | None = None) -> ImageSet:
    """Synthetic patches; their slides (3-8 patches) are the patients, or `per_patient` each."""
    data = make_synthetic(n, 16, seed=seed)
    if per_patient is not None:
        data.groups = np.repeat([f"patient-{k}" for k in range(-(-n // per_patient))], per_patient)[:n]
    return data


@pytest.mark.slow  # DP training of ResNet-18 layers
@pytest.mark.parametrize(("policy", "mode"), [("head", "hooks"), ("last-block", "ghost")])
def test_train_local_records_patient_level_history(policy: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """6 patients x 3 patches, cap 2, batch 2: q = 1/6 per patient (1/9 per patch); this seed has empty steps."""
    data = _patients(18, 0, per_patient=3)
    patients, usable = patient_counts(data.groups, 2)
    steps, q = epoch_steps(patients, usable, 2, 1)
    assert (patients, usable, steps, q) == (6, 12, 6, 1 / 6) and q != epoch_steps(len(data), len(data), 2, 1)[1]
    sizes: list[int] = []
    step_for = PatientPoissonSampler.step_for
    monkeypatch.setattr(PatientPoissonSampler, "step_for",
                        lambda self, p: sizes.append(len((st := step_for(self, p)).indices)) or st)
    model = resnet18(policy)
    before = get_trainable_state(model)
    settings = TrainSettings(epochs=1, batch_size=2, lr=0.05, momentum=0.0, randomness=public_randomness("13"), dp=True, noise_multiplier=0.9,
                             max_grad_norm=1.0, grad_sample_mode=mode, privacy_unit="patient", max_patches_per_patient=2,
                             min_records_per_step=1)
    outcome = train_local(model, data, settings, history=[(2.0, 0.1, 7)])
    assert outcome.history == [(2.0, 0.1, 7), (0.9, q, steps)]
    assert (outcome.steps, outcome.sample_rate, outcome.privacy_unit, outcome.num_patients) == (steps, q, "patient", 6)
    assert len(sizes) == steps and 0 in sizes and set(sizes) <= {0, 2, 4, 6, 8, 10, 12}  # whole patients, capped
    after = get_trainable_state(model)
    assert all(np.isfinite(v).all() for v in after.values()) and any(not np.array_equal(before[k], after[k]) for k in before)
    assert not any(hasattr(p, "grad_sample") or hasattr(p, "_norm_sample") for p in model.parameters())


def test_same_secret_seed_reproduces_a_round_and_another_does_not() -> None:
    data = _patients(20, 1)

    def run(seed: str, global_seed: int):
        torch.manual_seed(global_seed)  # the global RNG must play no part
        model = resnet18("head")
        settings = TrainSettings(epochs=2, batch_size=4, lr=0.1, momentum=0.5, randomness=public_randomness(f"{seed}"), dp=True, noise_multiplier=1.0,
                                 max_grad_norm=1.0, privacy_unit="patient", max_patches_per_patient=2, augment=False)
        train_local(model, data, settings)
        return get_trainable_state(model)

    first, again, other = run("123", 0), run("123", 99), run("124", 0)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert any(not np.array_equal(first[k], other[k]) for k in first)
    # the sampler too: same generator seed, same patients and patches; another seed, others
    patient = patient_index(data.groups)
    draw = lambda s: [st.indices.tolist() for st in PatientPoissonSampler(patient, 4, 2, public_randomness(s).stream("x"))]  # noqa: E731
    assert draw("5") == draw("5") and draw("5") != draw("6")


def test_settings_validate_the_unit() -> None:
    assert TrainSettings(epochs=1, batch_size=1, lr=0.1, momentum=0.0, randomness=public_randomness("0"), dp=True).privacy_unit == "patch"
    with pytest.raises(ValueError, match="privacy_unit"):
        TrainSettings(epochs=1, batch_size=1, lr=0.1, momentum=0.0, randomness=public_randomness("0"), dp=True, privacy_unit="slide")
    with pytest.raises(ValueError, match="max_patches_per_patient"):
        TrainSettings(epochs=1, batch_size=1, lr=0.1, momentum=0.0, randomness=public_randomness("0"), dp=True, max_patches_per_patient=0)
