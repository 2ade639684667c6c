"""What one round at a site knows as it goes, and the one place its reply is assembled.

Every outcome of a round (trained, refused at any step) answers with the same accounting values,
so the reply is built from this state alone (`RoundState.reply`, through `common.wire.reply`), never
field by field at each exit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from client.identity import SiteIdentity
from client.round_types import RoundRequest, RoundResult
from common.config.run_config import RunConfig
from common.data.sources import SiteData
from common.privacy.accounting import JobGrant
from common.training.patient_dp import PATCH
from common.wire.reply import SiteReplyContent

log = logging.getLogger("fedpath.site")


@dataclass
class RoundState:
    """What one round knows as it goes: the pieces every reply is built from."""

    identity: SiteIdentity
    config: RunConfig
    request: RoundRequest
    data: SiteData
    delta: float
    started: float
    unit: str = PATCH
    records: int = 0  # records in the unit of privacy: patches, or patients
    randomness: str = "secure"
    epsilon: float = 0.0
    grant: JobGrant | None = None
    epsilon_in_period: float = 0.0  # ε of the site's rounds in its trailing period (0 when it sets no allowance)
    local: dict[str, Any] = field(default_factory=dict)  # for the site's own log only (e.g. an ignored job id)
    overridden: list[str] = field(default_factory=list)  # run-config keys its own settings won over (client.overrides)

    def reply(self, status: str, refusal: str = "", update: dict[str, np.ndarray] | None = None,
              sigma: float = 0.0, steps: int = 0, sample_rate: float = 0.0, train_loss: float = float("nan"),
              val_accuracy: float = float("nan")) -> SiteReplyContent:
        trained = status == "trained"
        metrics = {
            "num-examples": len(self.data.train) if trained else 0,
            "epsilon": self.epsilon if self.config.dp else float("inf"),
            "epsilon-budget": self.identity.epsilon_budget,
            "epsilon-asked": self.config.epsilon,
            "epsilon-granted": self.grant.granted if self.grant else 0.0,
            "epsilon-per-period": self.identity.epsilon_per_period,
            "period-days": self.identity.period_days if self.identity.epsilon_per_period > 0 else 0.0,
            "epsilon-in-period": self.epsilon_in_period,
            "delta": self.delta if self.config.dp else 0.0,
            "noise-multiplier": sigma,
            "max-grad-norm": self.config.max_grad_norm,
            "privacy-records": self.records if trained else 0,
            "sample-rate": sample_rate,
            "steps": steps,
            "dp": int(self.config.dp),
            "shares-diagnostics": int(self.identity.share_diagnostics),
        }
        diagnostics = None
        if self.identity.share_diagnostics:
            diagnostics = {
                "train-loss": train_loss, "val-accuracy": val_accuracy, "val-examples": len(self.data.val),
                "class-counts": [int(c) for c in self.data.train.class_counts()],
                "skipped-files": self.data.train.report.skipped, "train-seconds": time.time() - self.started,
            }
        return SiteReplyContent(
            site_id=self.identity.site_id, status=status, refusal=refusal, randomness=self.randomness,
            privacy_unit=self.unit, metrics=metrics, diagnostics=diagnostics, update=update,
            overridden=",".join(self.overridden),
        )

    def refuse(self, code: str, detail: str) -> RoundResult:
        log.warning("site %s refuses round %d (unit of privacy: one %s): %s", self.identity.site_id,
                    self.request.server_round, self.unit, detail)
        return RoundResult(self.reply("refused", refusal=code), local_reason=detail, local=self.local)
