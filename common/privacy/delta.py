"""δ: its default, and the rule that a site's δ be at most 1/(10·n) for n training records.

δ must be well below 1/n: a mechanism that publishes one random record in the clear has δ = 1/n.
fedpath requires δ ≤ 1/(10·n), and the automatic δ (`delta = 0`) is exactly that bound. One
definition for the run config's validation (`common.config`), the launcher's pre-flight
(`simulations.run`) and the site (`client.site`), which checks its δ against its own record count.

Torch-free and import-free on purpose: validating a config must not load torch.
"""

from __future__ import annotations

from typing import Final

# The run config's and a simulation's default δ (pyproject.toml `delta`): suits sites of up to
# 10,000 training records under the rule below.
DEFAULT_DELTA: Final[float] = 1e-5

# δ ≤ MAX_DELTA_FACTOR / n for a site of n training records.
MAX_DELTA_FACTOR: Final[float] = 0.1


def auto_delta(num_training_records: int) -> float:
    """1/(10·n): the largest δ fedpath accepts for a site of n training records."""
    return MAX_DELTA_FACTOR / max(num_training_records, 1)


def check_delta(delta: float, num_training_records: int) -> str:
    """'' when δ suits a site of n training records, else why not (no counts: it may cross the wire)."""
    if delta > auto_delta(num_training_records) * (1 + 1e-12):
        return ("delta must be at most 1/(10·n) for a site of n training records (a mechanism that releases one "
                "record in the clear has delta = 1/n); lower delta or use delta = 0 for 1/(10·n)")
    return ""
