"""The server strategies a run may choose, and their hyper-parameters, free of Flower types.

One definition for the config validation (`common.config`), the server's factory
(`server.strategy.make_strategy`), the site's check of what the server sends (`proximal-mu`)
and the report's "Strategy" line. The names and defaults are Flower 1.42's
(`flwr.serverapp.strategy`): `server-lr` is Flower's `eta`, `beta-1`/`beta-2`/`tau` its
`beta_1`/`beta_2`/`tau`, `proximal-mu` FedProx's `proximal_mu` and the train-config key it sends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The names a run config's `strategy` may take: everything else names them through these constants
# (the server's factory has one class per name: tests/test_one_definition.py).
FEDAVG, FEDPROX, FEDADAM, FEDYOGI, FEDADAGRAD = "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad"
STRATEGIES = (FEDAVG, FEDPROX, FEDADAM, FEDYOGI, FEDADAGRAD)
DEFAULT_STRATEGY = FEDAVG  # also what runs recorded before strategies existed ran
FEDOPT = (FEDADAM, FEDYOGI, FEDADAGRAD)  # Flower's FedOpt family: a server optimizer with state
# Flower 1.42's default eta differs per strategy; `server-lr = 0` selects it.
FLOWER_SERVER_LR = {FEDADAM: 0.1, FEDYOGI: 0.01, FEDADAGRAD: 0.1}
# The run-config keys each strategy uses (the others are ignored by it).
HYPERPARAMETERS: dict[str, tuple[str, ...]] = {
    FEDAVG: (),
    FEDPROX: ("proximal-mu",),
    FEDADAM: ("server-lr", "beta-1", "beta-2", "tau"),
    FEDYOGI: ("server-lr", "beta-1", "beta-2", "tau"),
    FEDADAGRAD: ("server-lr", "tau"),  # Flower's FedAdagrad has no momentum (beta_1 = beta_2 = 0)
}


def strategy_problems(strategy: str, proximal_mu: float, server_lr: float, beta_1: float, beta_2: float,
                      tau: float, lr: float) -> list[str]:
    """What is wrong with these strategy settings ([] when valid); each message names the key."""
    if strategy not in STRATEGIES:
        return [f"strategy {strategy!r} is unknown; valid values: {', '.join(STRATEGIES)}"]
    problems = []
    if not proximal_mu_ok(proximal_mu):
        problems.append(f"proximal-mu must be a finite number >= 0, got {proximal_mu}")
    elif proximal_mu * lr > 1:
        # Each local step pulls the weights lr·mu of the way back to the global ones: beyond 1 a step
        # overshoots them (beyond 2(1 + momentum) training diverges), and the update screen's DP bound
        # (server.screening) holds only while the pull does not amplify steps.
        problems.append(f"proximal-mu × lr must be <= 1 (a larger pull overshoots the global weights "
                        f"in one step), got {proximal_mu} × {lr} = {proximal_mu * lr:.3g}")
    if not (math.isfinite(server_lr) and server_lr >= 0):
        problems.append(f"server-lr must be a finite number >= 0 (0 = Flower's default for the strategy), got {server_lr}")
    for key, beta in (("beta-1", beta_1), ("beta-2", beta_2)):
        if not 0 <= beta < 1:
            problems.append(f"{key} must be in [0, 1), got {beta}")
    if not (math.isfinite(tau) and tau > 0):
        problems.append(f"tau must be a finite number > 0 (it keeps the adaptive step finite), got {tau}")
    return problems


def proximal_mu_ok(value: Any) -> bool:
    """A usable FedProx weight: a real finite number >= 0 (what a site accepts from the server)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def strategy_settings(config: Mapping[str, Any]) -> dict[str, float]:
    """The hyper-parameters in force for `config['strategy']` (dash keys; server-lr 0 resolved)."""
    strategy = str(config.get("strategy", DEFAULT_STRATEGY))
    settings = {key: float(config[key]) for key in HYPERPARAMETERS.get(strategy, ()) if key in config}
    if settings.get("server-lr") == 0:
        settings["server-lr"] = FLOWER_SERVER_LR[strategy]
    return settings


def describe_strategy(config: Mapping[str, Any]) -> str:
    """One line for logs and the report, e.g. "fedadam (server-lr 0.1, beta-1 0.9, beta-2 0.99, tau 0.001)".

    Runs recorded before strategies existed have no `strategy` key: they ran FedAvg.
    """
    strategy = str(config.get("strategy", DEFAULT_STRATEGY))
    settings = strategy_settings(config)
    inner = ", ".join(f"{key} {value:g}" for key, value in settings.items())
    return f"{strategy} ({inner})" if inner else strategy
