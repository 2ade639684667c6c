"""FedProx's proximal term at a site: mu/2·||w − w_global||² in the local objective.

The term does not depend on any training record, so its gradient mu·(w − w_global) is not
clipped or noised: it is added to the gradient the optimizer applies *after* Opacus has
clipped, summed, noised and scaled the per-record gradients. w is a function of the global
weights (public to the site) and of earlier DP steps, so adding it is post-processing: it
costs no privacy budget, and clipping does not distort it (inside the clipped loss it would
be clipped away by up to C per record and charged for nothing). Without DP it is added to
the plain mini-batch gradient, the same objective.

Implemented as a step pre-hook on the torch optimizer that Opacus wraps: `DPOptimizer.step`
runs clip/noise/scale and then calls that optimizer's `step()`, which runs the hook first.
"""

from __future__ import annotations

import torch
from torch.utils.hooks import RemovableHandle


def attach_proximal_term(optimizer: torch.optim.Optimizer, mu: float) -> RemovableHandle | None:
    """Add mu·(w − w_start) to every parameter's gradient just before `optimizer` steps.

    `optimizer` must be the plain torch optimizer (the one given to Opacus), and the model must
    hold the global weights when this is called: they are copied here as w_global. mu = 0
    attaches nothing (FedAvg's objective). Returns the hook's handle, or None.
    """
    if mu < 0 or mu != mu:
        raise ValueError(f"proximal mu must be a number >= 0, got {mu}")
    if mu == 0:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    anchors = [p.detach().clone() for p in params]

    @torch.no_grad()
    def add_proximal_gradient(_optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        for param, anchor in zip(params, anchors):
            pull = (param - anchor).mul_(mu)
            if param.grad is None:
                param.grad = pull
            else:
                param.grad.add_(pull)

    return optimizer.register_step_pre_hook(add_proximal_gradient)
