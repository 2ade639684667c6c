"""Statistics of server-held images that the sites get: BatchNorm statistics and the head's input mean.

`center-head` (`head_input_mean`; on, or auto from scratch): the mean of the head's input over the server's validation images, from
the run's starting model, sent with every round so the sites train the head on centred features
(`common.model.head_centering`). Never a site's image and never the test set; recomputed when a run resumes (it
changes how the head is trained, not the model, so the bytes need not match to the bit).

`bn-statistics = public`: the server re-estimates the backbone's BatchNorm statistics on its public share.

Called once per run, before round 1 (`server.app._starting_point`), on the run's starting model:
the statistics come from the public share of groups (`public-fraction`), which no site holds and
the test set does not contain, stain-normalised as the sites' images are. They are kept in the run
directory, so a resumed run sends exactly the same bytes (a re-estimate in another process could
differ in the last bit and fail every site's frozen-layer fingerprint check).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.config.run_config import RunConfig
from common.data.imageset import ImageSet
from common.data.sources import public_share_as_trained
from common.files import atomic_file
from common.model.bn_statistics import estimate_statistics, pack, unpack
from common.model.head_centering import centring_applies, feature_mean, to_bytes
from common.model.inputs import normalise
from common.paths import BN_STATISTICS_FILE

log = logging.getLogger("fedpath.server")


def head_input_mean(config: RunConfig, model: nn.Module, images: ImageSet | None,
                    pretrained: bool) -> tuple[bytes | None, int]:
    """(the head's input mean over `images` as wire bytes, images used), or (None, 0) when centring does not apply
    (`centring_applies`: center-head = off, or auto with pretrained weights) or there are no images."""
    if not centring_applies(config.center_head, pretrained):
        return None, 0
    if images is None or len(images) == 0:
        log.info("center-head: the server holds no validation images, so the head is trained uncentred")
        return None, 0
    started = time.time()
    mean = feature_mean(model, torch.from_numpy(images.images).permute(0, 3, 1, 2), config.eval_batch_size,
                        prepare=normalise)
    log.info("head input mean over %d server validation images in %.1f s (|mean| %.2f): the sites train the head "
             "on centred features", len(images), time.time() - started, float(np.linalg.norm(mean)))
    return to_bytes(mean), len(images)


def public_batchnorm_statistics(config: RunConfig, model: nn.Module, run_root: Path) -> tuple[bytes | None, int]:
    """(the packed statistics now in `model`, public images used), or (None, 0) with `bn-statistics=backbone`."""
    if config.bn_statistics != "public":
        return None, 0
    saved = run_root / BN_STATISTICS_FILE
    if config.resume_from and saved.exists():
        blob = saved.read_bytes()
        unpack(model, blob)
        log.info("BatchNorm statistics: the run's own re-estimate, from %s", saved)
        return blob, 0
    started = time.time()
    public = public_share_as_trained(config)
    images = torch.from_numpy(public.images).permute(0, 3, 1, 2)
    estimate_statistics(model, images, config.eval_batch_size, prepare=normalise)
    blob = pack(model)
    run_root.mkdir(parents=True, exist_ok=True)
    with atomic_file(saved, "wb") as handle:
        handle.write(blob)
    log.info("BatchNorm statistics re-estimated on the public share (%d images) in %.1f s; %.1f KiB go to each "
             "site with every round's instructions", len(public), time.time() - started, len(blob) / 1024)
    return blob, len(public)
