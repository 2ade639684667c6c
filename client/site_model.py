"""The model a site trains in a round: built from the run's weights, checked against the server's.

Averaging is meaningful only if every site's frozen layers are the server's, bit for bit; a site
whose starting point differs (other weights, arch, policy, seed, or BatchNorm statistics) stops
with `ModelMismatch` before it trains, instead of sending an update that would corrupt the average.
"""

from __future__ import annotations

import torch

from client.identity import SiteIdentity
from client.round_types import RoundRequest
from common.config.run_config import RunConfig
from common.model.bn_statistics import unpack as unpack_statistics
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, set_trainable_state


class ModelMismatch(RuntimeError):
    """The site's frozen layers differ from the server's: averaging would be meaningless."""


def start_model(identity: SiteIdentity, config: RunConfig, request: RoundRequest) -> torch.nn.Module:
    """The run's starting model with the server's trainable tensors, once its frozen layers match the server's."""
    model, _ = initial_model(config, len(request.classes))
    put_public_statistics(identity, config, request, model)
    local_print = frozen_fingerprint(model)
    if local_print != request.frozen_fingerprint:
        raise ModelMismatch(
            f"site {identity.site_id}'s frozen layers differ from the server's (fingerprint {local_print[:12]} vs "
            f"{request.frozen_fingerprint[:12]}): both must start from the same weights ({config.weights}) and "
            "the same arch/policy/seed, or averaged updates are meaningless"
        )
    set_trainable_state(model, request.arrays)
    return model


def put_public_statistics(identity: SiteIdentity, config: RunConfig, request: RoundRequest,
                          model: torch.nn.Module) -> None:
    """bn-statistics=public: the server's public-data statistics into the frozen layers (checked by the fingerprint)."""
    if config.bn_statistics != "public":
        return
    if not isinstance(request.bn_statistics, bytes):
        raise ModelMismatch(f"site {identity.site_id}: the run uses bn-statistics=public but the server sent no "
                            "BatchNorm statistics")
    try:
        unpack_statistics(model, request.bn_statistics)
    except ValueError as err:
        raise ModelMismatch(f"site {identity.site_id}: the server's BatchNorm statistics do not fit: {err}") from err
