"""A *malicious* coordinator: crafted tensors, guessable noise. Each test is the attack first.

1. NaN/inf side channel: weights crafted so that one target patient's forward pass overflows must
   not make the update NaN only when that patient is present; non-finite or absurd server tensors
   are refused before any data is read.
2. Guessable noise: every secret draw comes from AES-256-CTR under a 256-bit round key; keys that
   agree in 64 bits (what a Mersenne Twister keeps of a seed: 32) give different noise; a site's
   dp-seed must carry >= 128 bits; no training module draws from torch's or NumPy's generators.
"""

from __future__ import annotations

import ast
import copy
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from client.identity import SiteIdentity, check_deployment_node_config
from client.round_types import RoundRequest
from client.server_input import MAX_ABS_WEIGHT, ServerInputError
from client.site import run_round
from common.config.run_config import ConfigError, RunConfig
from common.data.imageset import ImageSet
from common.data.sources import dataset_classes
from common.data.synthetic import make_synthetic
from common.model.factory import initial_model
from common.model.inputs import normalise
from common.model.network import apply_policy, build_resnet, frozen_fingerprint, get_trainable_state
from common.privacy.randomness import KEY_BYTES, RoundRandomness, SecretStream, public_randomness, seeded_randomness
from common.training.local import train_local
from common.training.settings import TrainSettings
from common.training.steps import grad_sample_mode_for
from tests.conftest import tiny_run_config

REPO = Path(__file__).resolve().parents[2]
SEED = "5e" * 32  # a site-held dp-seed of 256 bits
FLOAT32_MAX = float(torch.finfo(torch.float32).max)


# -- 1. the NaN / inf side channel --------------------------------------------------------------
@cache
def _base_resnet() -> nn.Module:
    return build_resnet("resnet18", 4, None, 0)  # the synthetic generator's 4 classes


def _data_with_target(patches: int) -> tuple[ImageSet, np.ndarray]:
    """24 synthetic patches of 8 patients, plus a target patient of `patches` patches the attacker singles out.

    The attacker knows something about its target (here: a saturated green marker region no H&E
    patch has) and crafts weights that overflow only on it.
    """
    data = make_synthetic(24, 32, seed=3)
    target = data.images[:patches].copy()
    target[:, 8:24, 8:24] = (0, 255, 0)
    images = np.concatenate([data.images, target])
    labels = np.concatenate([data.labels, data.labels[:patches]])
    groups = np.concatenate([np.repeat([f"p{k}" for k in range(8)], 3), ["target"] * patches])
    return ImageSet(images, labels, groups, data.classes), np.arange(24, 24 + patches)


def _without(data: ImageSet, rows: np.ndarray) -> ImageSet:
    keep = np.setdiff1d(np.arange(len(data)), rows)
    return ImageSet(data.images[keep], data.labels[keep], data.groups[keep], data.classes)


def _stem_input(model: nn.Module, images: np.ndarray) -> torch.Tensor:
    """The stem's frozen-BatchNorm output, i.e. what the first trainable layer (its ChannelAffine) sees."""
    x = normalise(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    with torch.no_grad():
        return model.bn1.norm(model.conv1(x))


def _crafted(policy: str, data: ImageSet, target: np.ndarray) -> nn.Module:
    """Weights that overflow on the target's patches only: one stem channel gated to fire on them, scaled to inf.

    The stem channel whose largest response on the target is the largest multiple of
    b = max(1, its largest response on every other patch) gets scale A = M / b and shift -M (M just
    below float32's maximum): after ReLU it is 0 for every other patch, while A·x overflows to inf
    on the target wherever x exceeds b by more than 1%: the target's logits become NaN.
    """
    model = apply_policy(copy.deepcopy(_base_resnet()), policy)
    stem = _stem_input(model, data.images)
    others = np.setdiff1d(np.arange(len(data)), target)
    target_max = stem[target].amax(dim=(0, 2, 3)).double()
    others_max = stem[others].amax(dim=(0, 2, 3)).double()
    bound = others_max.clamp(min=1.0)
    channel = int(torch.argmax(target_max / bound))
    assert float(target_max[channel] / bound[channel]) > 1.05, "the target must stand out in one stem channel"
    ceiling = 0.99 * FLOAT32_MAX
    with torch.no_grad():
        model.bn1.affine.weight[channel] = ceiling / float(bound[channel])
        model.bn1.affine.bias[channel] = -ceiling
    return model


def _logits_finite(model: nn.Module, images: np.ndarray) -> np.ndarray:
    x = normalise(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    with torch.no_grad():
        return torch.isfinite(model.eval()(x)).all(dim=1).numpy()


@pytest.mark.parametrize(("policy", "unit"), [("norm-head", "patch"), ("norm-head", "patient"), ("full", "patient")])
def test_weights_crafted_to_overflow_on_one_patient_give_a_finite_update_with_and_without_them(policy: str,
                                                                                                unit: str) -> None:
    """The attack of issue 21: P[NaN | target present] was 1, P[NaN | absent] 0. Now both updates are finite.

    norm-head runs Opacus' hooks mode (per-record rows zeroed before clipping), full its ghost
    clipping (factor 0 and inputs sanitised); at the patch unit the target is one patch.
    """
    data, target = _data_with_target(3 if unit == "patient" else 1)
    model = _crafted(policy, data, target)
    finite = _logits_finite(model, data.images)
    assert not finite[target].any() and finite[np.setdiff1d(np.arange(len(data)), target)].all(), \
        "precondition: the crafted weights overflow on the target's patches and nowhere else"
    settings = TrainSettings(epochs=2, batch_size=9, lr=0.1, momentum=0.5, randomness=public_randomness("nan"),
                             dp=True, noise_multiplier=1.0, max_grad_norm=1.0, privacy_unit=unit,
                             grad_sample_mode=grad_sample_mode_for(policy), augment=False)
    outcomes = {}
    for present in (True, False):
        trained = copy.deepcopy(model)
        outcome = train_local(trained, data if present else _without(data, target), settings)
        update = get_trainable_state(trained)
        assert all(np.isfinite(v).all() for v in update.values()), f"non-finite update with the target present={present}"
        outcomes[present] = outcome
    assert outcomes[True].nonfinite_records > 0  # the target was sampled and zeroed: a local count only
    if policy != "full":  # where conv1 trains, a step can push other patches over the crafted gate too
        assert outcomes[False].nonfinite_records == 0
    assert outcomes[True].history == outcomes[False].history  # same steps, q, σ: nothing else differs


def _tiny_config(**extra: object) -> RunConfig:
    return RunConfig.from_mapping(tiny_run_config(**{"noise-multiplier": 1.0, **extra}))


def _request(config: RunConfig, arrays: dict[str, np.ndarray], **extra: object) -> RoundRequest:
    model, _ = initial_model(config, len(dataset_classes(config)))
    return RoundRequest(run_id=1, server_round=1, arrays=arrays, classes=dataset_classes(config),
                        frozen_fingerprint=frozen_fingerprint(model), **extra)


def _honest_arrays(config: RunConfig) -> dict[str, np.ndarray]:
    model, _ = initial_model(config, 4)
    return dict(get_trainable_state(model))


def _deployed_site_without_data(tmp_path: Path) -> SiteIdentity:
    """A deployed site whose data folder does not exist: reading any data would fail with a DataError."""
    return SiteIdentity(site_id="hospital-a", deployed=True, state_dir=tmp_path / "state", epsilon_budget=8.0,
                        delta=1e-5, data_path=tmp_path / "no-such-data")


@pytest.mark.parametrize("poison", ["nan", "inf", "huge", "integer"])
def test_non_finite_or_absurd_server_tensors_are_refused_before_any_data_is_read(tmp_path: Path, poison: str) -> None:
    config = _tiny_config()
    arrays = _honest_arrays(config)
    name = "fc.weight"
    bad = arrays[name].copy()
    if poison == "integer":
        arrays[name] = bad.astype(np.int64)
    else:
        bad.flat[0] = {"nan": np.nan, "inf": np.inf, "huge": 10 * MAX_ABS_WEIGHT}[poison]
        arrays[name] = bad
    message = {"nan": "non-finite", "inf": "non-finite", "huge": "no trained network", "integer": "not floating"}[poison]
    with pytest.raises(ServerInputError, match=message):  # not a DataError: the data was never opened
        run_round(_deployed_site_without_data(tmp_path), config, _request(config, arrays))


def test_non_finite_batchnorm_statistics_are_refused_before_any_data_is_read(tmp_path: Path) -> None:
    config = _tiny_config()
    statistics = np.ones(64, dtype="<f4")
    statistics[3] = np.nan
    with pytest.raises(ServerInputError, match="BatchNorm statistics hold non-finite"):
        run_round(_deployed_site_without_data(tmp_path), config,
                  _request(config, _honest_arrays(config), bn_statistics=statistics.tobytes()))


@pytest.mark.parametrize(("poison", "message"), [
    ("nan", "head input mean hold non-finite values"), ("huge", "head input mean hold non-finite values or values beyond"),
    ("short", "head input mean has 511 values, not one per input"), ("odd-bytes", "head input mean are not float32 bytes"),
])
def test_a_crafted_head_input_mean_is_refused_before_any_data_is_read(tmp_path: Path, poison: str, message: str) -> None:
    config = _tiny_config()
    mean = np.zeros(512, dtype="<f4")
    blob = {"nan": lambda: np.where(np.arange(512) == 3, np.nan, mean).astype("<f4").tobytes(),
            "huge": lambda: np.full(512, 10 * MAX_ABS_WEIGHT, dtype="<f4").tobytes(),
            "short": lambda: mean[:511].tobytes(), "odd-bytes": lambda: mean.tobytes()[:-1]}[poison]()
    with pytest.raises(ServerInputError, match=message):  # not a DataError: the data was never opened
        run_round(_deployed_site_without_data(tmp_path), config,
                  _request(config, _honest_arrays(config), head_input_mean=blob))


def test_the_most_extreme_in_range_head_input_mean_still_gives_a_finite_update(tmp_path: Path) -> None:
    """Attack: the mean and the head's weights at the screening bound (±1e6). The centred logits W·(f - m) + b'
    are then ~1e15 per term, far below float32's 3.4e38, so the mean alone cannot make a record's logits
    non-finite (crafted weights can, and are handled above); the site trains and what it sends is finite."""
    config = _tiny_config()
    arrays = _honest_arrays(config)
    arrays["fc.weight"] = np.full_like(arrays["fc.weight"], MAX_ABS_WEIGHT)
    blob = np.full(512, -MAX_ABS_WEIGHT, dtype="<f4").tobytes()
    identity = SiteIdentity(site_id="site-0", deployed=False, state_dir=tmp_path / "site", epsilon_budget=32.0,
                            delta=None, partition_id=0, num_partitions=2, dp_seed=SEED)
    result = run_round(identity, config, _request(config, arrays, head_input_mean=blob))
    assert result.status == "trained" and all(np.isfinite(v).all() for v in result.update.values())
    assert "nonfinite" not in repr(result.reply.metrics) and result.reply.diagnostics is None


def test_in_range_weights_that_overflow_every_record_still_give_a_finite_update(tmp_path: Path) -> None:
    """Every BatchNorm scale at 1e6 (in range): activations overflow for every record; the site still trains,
    and what it sends is finite (each record zeroed: the update is pure noise)."""
    config = _tiny_config()
    arrays = {k: (np.full_like(v, MAX_ABS_WEIGHT) if k.endswith("affine.weight") else v)
              for k, v in _honest_arrays(config).items()}
    identity = SiteIdentity(site_id="site-0", deployed=False, state_dir=tmp_path / "site", epsilon_budget=32.0,
                            delta=None, partition_id=0, num_partitions=2, dp_seed=SEED)
    result = run_round(identity, config, _request(config, arrays))
    assert result.status == "trained"
    assert all(np.isfinite(v).all() for v in result.update.values())
    assert result.local["nonfinite_records"] > 0  # in the site's own log, never in the reply
    assert "nonfinite" not in repr(result.reply.metrics) and result.reply.diagnostics is None


# -- 2. noise nobody can guess ---------------------------------------------------------------------
def _noise(key: bytes) -> torch.Tensor:
    return RoundRandomness("secure", key).stream("dp-noise").normal((4096,), 1.0)


def test_round_keys_that_agree_in_64_bits_give_different_noise() -> None:
    """torch's CPU generator keeps 32 bits of a seed: 64-bit seeds collided after ~41k tries. A round key
    has 256 bits and all of them count: keys equal in their first 64 (or first 248) bits differ in noise."""
    base = bytes(range(KEY_BYTES))
    tail = base[:8] + bytes(24)
    last = base[:-1] + bytes([base[-1] ^ 1])
    first = _noise(base)
    assert not torch.equal(first, _noise(tail)) and not torch.equal(first, _noise(last))
    assert torch.equal(first, _noise(base))  # the same key replays exactly (what dp-seed is for)
    assert float(torch.corrcoef(torch.stack([first, _noise(last)]))[0, 1]) < 0.1  # independent, not nearby


def test_purposes_of_one_round_key_are_independent_streams() -> None:
    keys = public_randomness("purposes")
    assert not torch.equal(keys.stream("dp-noise").rand(64), keys.stream("dp-sampling").rand(64))
    assert repr(keys.stream("x")) == "SecretStream(<secret>)" and keys.key.hex() not in repr(keys)


def test_a_dp_seed_needs_128_bits_and_all_of_them_count() -> None:
    for short in ("hospital-secret", "ab" * 15, "abc"):
        with pytest.raises(ValueError, match="at least 32 hexadecimal digits"):
            seeded_randomness(short, "site-a", 0)
    with pytest.raises(ConfigError, match="site-dp-seed must be at least 32 hexadecimal digits"):
        RunConfig.from_mapping(tiny_run_config(**{"site-dp-seed": "attacker"}))
    node = {"data-path": "/d", "site-id": "a", "epsilon-budget": 8, "delta": 1e-5, "state-dir": "/s", "dp-seed": "12ab"}
    with pytest.raises(ConfigError, match="dp-seed must be at least 32 hexadecimal digits"):
        check_deployment_node_config(node)
    a, b = "00" * 16 + "01" * 16, "00" * 16 + "02" * 16  # equal in their first 128 bits
    noise = lambda seed: seeded_randomness(seed, "site-a", 0).stream("dp-noise").normal((256,), 1.0)  # noqa: E731
    assert not torch.equal(noise(a), noise(b))
    assert torch.equal(noise(a), noise(a))


# The site's training path: every random draw there must come from a SecretStream.
TRAINING_PATH = [
    "common/training/local.py", "common/training/loop.py", "common/training/private.py", "common/training/dp_engine.py",
    "common/model/inputs.py", "common/data/stain_handling.py", *sorted(str(p.relative_to(REPO)) for p in
                                                                       (REPO / "common" / "patient_dp").glob("*.py")),
]
FORBIDDEN_CALLS = {"rand", "randn", "randint", "randperm", "normal", "bernoulli", "multinomial", "Generator",
                   "manual_seed", "seed", "default_rng", "RandomState", "shuffle", "choice", "permutation", "uniform"}


def test_no_training_module_draws_from_torch_or_numpy_generators() -> None:
    """Makes "nothing secret uses the global generator" impossible, not just untrue today: any call of
    torch's, NumPy's or `random`'s generators in the site's training path fails this test."""
    offenders = []
    for rel in TRAINING_PATH:
        tree = ast.parse((REPO / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n == "random" or n.startswith(("numpy.random", "torch.random")) for n in names):
                    offenders.append(f"{rel}:{node.lineno} imports a generator module")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in FORBIDDEN_CALLS:
                owner = ast.unparse(node.func.value)
                if owner in ("torch", "np", "numpy", "np.random", "numpy.random", "random", "torch.random"):
                    offenders.append(f"{rel}:{node.lineno} calls {owner}.{node.func.attr}")
    assert not offenders, offenders


def test_a_secret_stream_refuses_a_short_key() -> None:
    with pytest.raises(ValueError, match="32-byte key"):
        SecretStream(bytes(8))
    with pytest.raises(ValueError, match="a round key has 32 bytes"):
        RoundRandomness("secure", bytes(16))
