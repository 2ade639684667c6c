"""What a round at a site takes in (`RoundRequest`) and gives back (`RoundResult`), free of Flower types.

The ClientApp translates Flower's Message into a request and a result into a Message; tests and the
experiments build requests directly. The result keeps apart what goes on the wire (the reply, built
by `common.wire.reply`) and the full local reason, which stays in the site's own log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.wire.reply import SiteReplyContent


@dataclass
class RoundRequest:
    """What the server sent: global trainable weights and the round's instructions."""

    run_id: int
    server_round: int
    arrays: Mapping[str, np.ndarray]
    classes: list[str]
    frozen_fingerprint: str
    # the job id the server's train config names (a resumed run names its first run's id); None = none named.
    # A claim only: the site charges the round to a job it can verify (common.privacy.jobs.choose_job).
    job_id: int | None = None
    # FedProx's mu, as the server's train config sent it (checked before use: common.config.strategies.proximal_mu_ok)
    proximal_mu: Any = 0.0
    # bn-statistics=public: the BatchNorm statistics the server estimated on its public share (bytes, common.model.bn_statistics)
    bn_statistics: Any = None
    # center-head (on, or auto from scratch): the mean of the head's input over server-held images (float32 bytes, common.model.head_centering)
    head_input_mean: Any = None


@dataclass
class RoundResult:
    """The reply that goes on the wire, and the full local reason that does not."""

    reply: SiteReplyContent
    local_reason: str = ""
    local: dict[str, Any] = field(default_factory=dict)  # facts for the site's own log only (the job charged, ...)

    @property
    def status(self) -> str:
        return self.reply.status

    @property
    def reason(self) -> str:
        return self.local_reason

    @property
    def update(self) -> dict[str, np.ndarray] | None:
        return self.reply.update

    @property
    def metrics(self) -> dict[str, float]:
        return self.reply.metrics
