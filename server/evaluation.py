"""Central evaluation of the global model on the held-out test set: per patch, and per patient where it names them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from common.data.imageset import ImageSet
from common.evaluation.metrics import full_evaluation, headline_metrics
from common.evaluation.patients import patient_evaluation
from common.model.network import set_trainable_state
from common.training.local import predict


@dataclass
class CentralEvaluator:
    """Holds the model skeleton and test set; evaluates any trainable state on them."""

    model: nn.Module
    test: ImageSet
    batch_size: int = 256

    def _probs(self, state: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
        set_trainable_state(self.model, state)
        return predict(self.model, self.test, self.batch_size)

    def round_metrics(self, state: dict[str, np.ndarray]) -> dict[str, float]:
        probs, loss = self._probs(state)
        return {**headline_metrics(self.test.labels, probs), "loss": loss}

    def final_metrics(self, state: dict[str, np.ndarray], bootstrap_samples: int, seed: int) -> dict[str, Any]:
        probs, loss = self._probs(state)
        out = full_evaluation(self.test.labels, probs, self.test.classes, bootstrap_samples, seed)
        out["loss"] = loss
        # per patient only where the data names patients (a group per image would just repeat the patch level)
        out["patient_level"] = patient_evaluation(self.test.labels, probs, self.test.groups, self.test.classes,
                                                  bootstrap_samples, seed) if self.test.patient_groups else None
        return out
