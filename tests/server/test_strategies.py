"""Server strategies (FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad): config, composition, FedProx at the site.

Aggregation runs real Flower strategies on real `Message`s built like a site's reply
(tests/server/test_update_screening.py): the composed class must give exactly what the plain
Flower strategy gives on the updates that pass screening, and keep fedpath's bookkeeping.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdagrad, FedAdam, FedAvg, FedProx, FedYogi
from torch import nn

from client.identity import SiteIdentity
from client.round_types import RoundRequest
from client.site import run_round
from common.config.run_config import ConfigError, RunConfig
from common.config.strategies import describe_strategy
from common.data.imageset import ImageSet
from common.data.sources import dataset_classes
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.privacy.randomness import public_randomness
from common.training.dp_engine import site_accountant
from common.training.local import train_local
from common.training.patient_dp import PatientPoissonSampler, make_private_per_patient
from common.training.proximal import attach_proximal_term
from common.training.settings import TrainSettings
from common.wire.records import from_array_record, to_array_record
from server.screening import UpdateScreen
from server.strategy import make_strategy
from tests.conftest import tiny_run_config
from tests.helpers.flower_messages import BOUND, REFERENCE, START, ThreeNodes, mixed_replies

FLOWER = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}
def _config(**overrides: object) -> RunConfig:
    return RunConfig.from_mapping({"min-train-nodes": 1, "min-available-nodes": 1, **overrides})


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": "fedsgd"}, "strategy 'fedsgd' is unknown; valid values: fedavg, fedprox, fedadam"),
    ({"proximal-mu": -0.1}, "proximal-mu must be a finite number >= 0"),
    ({"proximal-mu": float("nan")}, "proximal-mu must be a finite number >= 0"),
    ({"proximal-mu": 20.0, "lr": 0.1}, "proximal-mu × lr must be <= 1"),
    ({"server-lr": -1.0}, "server-lr must be a finite number >= 0"),
    ({"beta-1": 1.0}, "beta-1 must be in [0, 1)"),
    ({"beta-2": -0.5}, "beta-2 must be in [0, 1)"),
    ({"tau": 0.0}, "tau must be a finite number > 0"),
])
def test_invalid_strategy_settings_are_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _config(**overrides)


@pytest.mark.parametrize("name", FLOWER)
def test_the_factory_builds_flowers_strategy_with_the_run_configs_settings(name: str) -> None:
    config = _config(strategy=name, **{"proximal-mu": 0.3, "beta-1": 0.5, "beta-2": 0.7, "tau": 0.01})
    strategy = make_strategy(config, UpdateScreen(REFERENCE), round_offset=2)
    assert isinstance(strategy, FLOWER[name]) and strategy.round_offset == 2
    assert strategy.fraction_evaluate == 0.0 and strategy.min_train_nodes == 1  # evaluation is central
    if name == "fedprox":
        assert strategy.proximal_mu == 0.3
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        assert strategy.eta == {"fedadam": 0.1, "fedyogi": 0.01, "fedadagrad": 0.1}[name]  # server-lr 0: Flower's
        assert strategy.tau == 0.01 and strategy.eta_l == config.lr
        assert (strategy.beta_1, strategy.beta_2) == ((0.0, 0.0) if name == "fedadagrad" else (0.5, 0.7))
        assert make_strategy(_config(strategy=name, **{"server-lr": 0.03}), UpdateScreen(REFERENCE)).eta == 0.03
    line = describe_strategy(config.to_mapping())
    assert line.startswith(name) and ("proximal-mu 0.3" in line) == (name == "fedprox")
    assert ("server-lr" in line) == (name in ("fedadam", "fedyogi", "fedadagrad"))
    assert describe_strategy({}) == "fedavg"  # runs recorded before strategies existed


@pytest.mark.parametrize("name", FLOWER)
def test_each_strategy_aggregates_exactly_the_screened_updates(name: str, flower_process: None) -> None:
    config = _config(strategy=name, **{"proximal-mu": 0.2})
    strategy = make_strategy(config, UpdateScreen(REFERENCE, dp_bound=BOUND), round_offset=3)
    messages = list(strategy.configure_train(1, to_array_record(START), ConfigRecord({"classes": ["a"]}), ThreeNodes()))
    sent = messages[0].content["config"]
    assert sent["server-round"] == 4  # the job's round, after the 3 a resumed run had completed
    assert (sent.get("proximal-mu") == 0.2) == (name == "fedprox")

    arrays, metrics = strategy.aggregate_train(1, mixed_replies())
    assert arrays is not None and metrics["sites-aggregated"] == 2
    status = {r.site_id: r.status for r in strategy.replies[4]}
    assert status == {"site-1": "trained", "site-2": "trained", "site-3": "rejected", "site-4": "rejected",
                      "node-5": "failed", "site-6": "refused"}
    assert strategy.replies[4][-1].refusal == "budget-exhausted"

    # The same Flower strategy, given only the two updates that passed, in its own round 1.
    plain = FLOWER[name](**_flower_kwargs(strategy))
    list(plain.configure_train(1, to_array_record(START), ConfigRecord({}), ThreeNodes()))
    expected, _ = plain.aggregate_train(1, mixed_replies()[:2])
    got, want = from_array_record(arrays), from_array_record(expected)
    for key in REFERENCE:
        assert got[key].dtype == np.float32  # what was sent, whatever dtype Flower's update produced
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)
    moved = got["a"][0, 0] - START["a"][0, 0]
    assert moved != 0 and (name != "fedavg" or np.isclose(got["a"][0, 0], (10 * 0.6 + 30 * 0.3) / 40))


def _flower_kwargs(strategy: object) -> dict:
    keys = ("eta", "eta_l", "beta_1", "beta_2", "tau") if isinstance(strategy, (FedAdam, FedYogi)) else \
        ("eta", "eta_l", "tau") if isinstance(strategy, FedAdagrad) else \
        ("proximal_mu",) if isinstance(strategy, FedProx) else ()
    return {"min_train_nodes": 1, "min_available_nodes": 1, **{k: getattr(strategy, k) for k in keys}}


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_a_round_with_too_few_updates_leaves_the_server_optimizer_as_it_was(name: str, flower_process: None) -> None:
    strategy = make_strategy(_config(strategy=name, **{"min-accepted-updates": 2}),
                             UpdateScreen(REFERENCE, dp_bound=BOUND))
    list(strategy.configure_train(1, to_array_record(START), ConfigRecord({}), ThreeNodes()))
    first, _ = strategy.aggregate_train(1, mixed_replies())
    moments = {k: v.copy() for k, v in strategy.m_t.items()}, {k: v.copy() for k, v in strategy.v_t.items()}
    list(strategy.configure_train(2, first, ConfigRecord({}), ThreeNodes()))
    assert strategy.aggregate_train(2, mixed_replies()[1:]) == (None, None)  # one usable update, two needed
    for before, after in zip(moments, (strategy.m_t, strategy.v_t)):
        for key in before:
            np.testing.assert_array_equal(before[key], after[key])
    assert [r.status for r in strategy.replies[2]].count("trained") == 1


def _tiny_images(n: int = 64, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = (rng.integers(0, 100, (n, 8, 8, 3)) + 120 * labels[:, None, None, None]).astype(np.uint8)
    return ImageSet(images, labels, np.arange(n) // 4, ["a", "b"], patient_groups=True)


@pytest.mark.parametrize("dp, unit", [(False, "patch"), (True, "patch"), (True, "patient")])
def test_the_proximal_term_pulls_a_sites_update_toward_the_global_weights(dp: bool, unit: str) -> None:
    """Same seed (same batches, same DP noise): only mu differs, and mu > 0 ends closer to w_global."""
    distances = {}
    for mu in (0.0, 2.0):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
        start = [p.detach().clone() for p in model.parameters()]
        settings = TrainSettings(epochs=2, batch_size=16, lr=0.2, momentum=0.5, randomness=public_randomness("11"), dp=dp, noise_multiplier=1.0,
                                 max_grad_norm=1.0, privacy_unit=unit, max_patches_per_patient=4, proximal_mu=mu)
        outcome = train_local(model, _tiny_images(), settings)
        assert outcome.steps > 0
        distances[mu] = float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start)) ** 0.5)
    assert 0 < distances[2.0] < 0.95 * distances[0.0], distances


@pytest.mark.parametrize("unit", ["patch", "patient"])
def test_the_proximal_gradient_is_added_after_clipping_and_noise(unit: str) -> None:
    """fedpath's own DP training (`train_local`: the site's engine, sigma > 0, noise and sampling from the seed).

    Two steps with q = 1 (every record in every step, so sampling cannot differ): step 1 is the same with and
    without mu (w = w_global, the pull is 0); step 2 starts from the same w_1 and draws the same noise from the
    same seed. So the update with mu minus the update without mu is exactly -lr·mu·(w_1 - w_global): the pull
    neither clipped with the records' gradients (C = 1 clips them here), nor noised, nor divided by the
    expected batch size, as it would be if it were added anywhere before Opacus' step ends.
    """
    lr, mu, momentum = 0.5, 1.5, 0.5  # with momentum too: step 2's velocity differs by the pull alone
    data = _tiny_images()  # 64 patches, 16 patients of 4

    def train(epochs: int, mu: float, sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        torch.manual_seed(0)  # the same starting weights each time (the global RNG enters nothing else)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
        start = torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().copy()
        settings = TrainSettings(epochs=epochs, batch_size=64, lr=lr, momentum=momentum, randomness=public_randomness("11"), dp=True,
                                 noise_multiplier=sigma, max_grad_norm=1.0, privacy_unit=unit,
                                 max_patches_per_patient=4, proximal_mu=mu)
        outcome = train_local(model, data, settings)
        assert (outcome.steps, outcome.sample_rate, outcome.privacy_unit) == (epochs, 1.0, unit)
        return start, torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()

    w_global, w_1 = train(1, 0.0)
    _, w_2 = train(2, 0.0)
    _, w_2_mu = train(2, mu)
    assert not np.array_equal(w_1, train(1, 0.0, sigma=0.0)[1])  # there is noise in these steps
    pull = mu * (w_1 - w_global)
    assert np.abs(pull).max() > 1e-3  # large against float32 rounding at these weights (~1e-8)
    np.testing.assert_allclose(w_2_mu - w_2, -lr * pull, rtol=1e-4, atol=1e-6)


def test_with_a_vanishing_clipping_norm_only_the_proximal_pull_moves_the_weights() -> None:
    """fedpath's engine (sigma > 0) with C = 1e-9: the data's gradient and the noise (sigma·C) are gone, the
    proximal pull stays whole: w' - w_g = (1 - lr·mu)(w - w_g)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = attach_proximal_term(optimizer, 3.0)  # w_global = the weights now
    anchors = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # as after earlier local steps
    inputs, labels = torch.randn(32, 4), torch.randint(0, 2, (32,))
    keys = public_randomness("7")
    sampler = PatientPoissonSampler(np.arange(32), 32, 1, keys.stream("dp-sampling"))  # patch level: q = 1
    private = make_private_per_patient(site_accountant(None), keys.stream("dp-noise"), module=model, optimizer=optimizer,
                                       criterion=nn.CrossEntropyLoss(), sampler=sampler, noise_multiplier=1.0,
                                       max_grad_norm=1e-9)
    step = next(iter(sampler))
    private.begin_step(step)
    private.criterion(private.module(inputs[step.indices]), labels[step.indices]).backward()
    private.optimizer.step()
    for p, anchor in zip(model.parameters(), anchors):
        np.testing.assert_allclose((p.detach() - anchor).numpy(), np.full(p.shape, 1 - 0.1 * 3.0), rtol=1e-5)
    assert handle is not None and attach_proximal_term(optimizer, 0.0) is None  # mu = 0: FedAvg's objective
    with pytest.raises(ValueError, match="proximal mu"):
        attach_proximal_term(optimizer, -1.0)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "0.1"])
def test_a_site_refuses_a_proximal_mu_that_is_not_a_finite_number_at_least_0(bad: object, tmp_path) -> None:
    config = RunConfig.from_mapping(tiny_run_config(**{"synthetic-images": 60}))
    classes = dataset_classes(config)
    model, _ = initial_model(config, len(classes))
    identity = SiteIdentity("site-0", False, tmp_path, 8.0, 1e-4, partition_id=0, num_partitions=2,
                            epsilon_per_job=8.0)
    request = RoundRequest(1, 1, get_trainable_state(model), classes, frozen_fingerprint(model), proximal_mu=bad)
    result = run_round(identity, config, request)
    assert result.status == "refused" and result.reply.refusal == "invalid-proximal-mu" and result.update is None
    assert result.metrics["epsilon"] == 0.0  # refused before anything was trained or spent
