"""Round acceptance (`round-acceptance`): the job never ends worse than where it started.

The rule, written once here: **a round is kept iff its aggregated model's validation accuracy is ≥ the
starting model's (round 0; for a resumed job, the model it resumed from); a tie keeps the round.** Every kept
model is at least as good as the start on that data, so the job never ends worse than where it started. The
floor is the start, not the best kept so far: DP trajectories are noisy, and a greedy "best so far" rule,
which restarts every round from the best model, dropped rounds that later ones would have built on (the
README's from-scratch run ended at 0.49 under it and 0.71 keeping every round). A round not kept
is dropped: the server carries on from the last kept model (the next round's instructions send its
weights), and the job's end model is the last kept one (`server.app`). `all` keeps every round.

Validation data is server-held and never the central test set (`common.data.sources.server_validation_set`):
a part of the held-out groups (never the public share, which a backbone may have been pretrained on). Judging the sites' DP outputs on data the server holds is
post-processing: it costs no privacy budget and the sites' ε is unchanged (docs/PRIVACY.md).

Flower-free and torch-free: the strategy (`server.strategy`) asks `RoundAcceptance.judge` and acts on the
`Decision`; this module only decides and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

VALIDATION, ALL = "validation", "all"  # common.config.choices.ROUND_ACCEPTANCE_SETTINGS

RULE = ("a round is kept iff its aggregated model's validation accuracy is >= the starting model's (round 0; a "
        "tie keeps the round); a round not kept is dropped, the next round starts from the last kept model, and "
        "the job's end model is the last kept one, never worse than the start on the validation data")
NO_PRIVACY_COST = ("judging the sites' DP updates on server-held data is post-processing: it costs no privacy "
                   "budget and changes no site's ε")


def keeps(validation_accuracy: float, start_accuracy: float) -> bool:
    """The acceptance rule: at least as accurate on validation data as the starting model (ties keep)."""
    return validation_accuracy >= start_accuracy


@dataclass(frozen=True)
class Decision:
    """What became of one round's aggregated model, and why (metrics.jsonl's `acceptance`, the report)."""

    round: int
    kept: bool
    validation_accuracy: float | None  # of this round's aggregated model; None: no model, or no validation data
    kept_round: int  # the kept model the next round starts from (this round, if kept)
    kept_accuracy: float | None  # its validation accuracy
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"round": self.round, "kept": self.kept, "validation_accuracy": self.validation_accuracy,
                "kept_round": self.kept_round, "kept_validation_accuracy": self.kept_accuracy, "reason": self.reason}


class RoundAcceptance:
    """The state of the rule over a job: the start's validation accuracy (the floor), the last kept round and its."""

    def __init__(self, mode: str = VALIDATION) -> None:
        if mode not in (VALIDATION, ALL):
            raise ValueError(f"round acceptance {mode!r} is not one of {VALIDATION}, {ALL}")
        self.mode = mode
        self.kept_round = 0
        self.kept_accuracy: float | None = None
        self.floor: float | None = None  # the starting model's validation accuracy

    def start(self, server_round: int, validation_accuracy: float | None, kept_round: int | None = None) -> Decision:
        """The starting model (round 0, or the round a resumed job starts after) is kept by definition.

        `kept_round`: where a resumed job's model was last kept (its records say), when not `server_round`.
        """
        self.kept_round = server_round if kept_round is None else kept_round
        self.kept_accuracy = self.floor = validation_accuracy
        where = "the starting model" if server_round == 0 else f"the model this job resumed from (round {self.kept_round})"
        return Decision(server_round, True, validation_accuracy, self.kept_round, validation_accuracy,
                        f"{where}: kept by definition")

    def judge(self, server_round: int, validation_accuracy: float | None) -> Decision:
        """Keep or drop the aggregated model of `server_round`; the state follows a kept one."""
        start = f"the start's {_fmt(self.floor)}"
        if self.mode == ALL:
            kept, reason = True, "round-acceptance = all: every round is kept"
        elif validation_accuracy is None or self.floor is None:
            raise ValueError("round-acceptance = validation needs a validation accuracy for every model")
        elif keeps(validation_accuracy, self.floor):
            kept, reason = True, f"validation accuracy {_fmt(validation_accuracy)} >= {start}"
        else:
            kept, reason = False, (f"validation accuracy {_fmt(validation_accuracy)} < {start}; the model of round "
                                   f"{self.kept_round} stays")
        if kept:
            self.kept_round, self.kept_accuracy = server_round, validation_accuracy
        return Decision(server_round, kept, validation_accuracy, self.kept_round, self.kept_accuracy, reason)

    def no_model(self, server_round: int, why: str) -> Decision:
        """A round that produced no aggregated model (too few usable updates): nothing to keep."""
        return Decision(server_round, False, None, self.kept_round, self.kept_accuracy,
                        f"no aggregated model ({why}); the model of round {self.kept_round} stays")


def _fmt(accuracy: float | None) -> str:
    return "n/a" if accuracy is None else f"{accuracy:.4f}"
