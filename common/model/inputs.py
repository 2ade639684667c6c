"""Images as tensors: the one conversion every trainer, evaluator and tool uses.

Images are kept as uint8 NHWC arrays (an `ImageSet`) and become float only per batch, so a site
never holds a float copy of its whole dataset; `normalise` is the input scaling pretrained
torchvision backbones expect, so the server, the sites and the tools feed the model the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import TensorDataset

from common.data.imageset import ImageSet

if TYPE_CHECKING:  # the type of the stream augmentation draws from; the model package imports no privacy code
    from common.privacy.randomness import SecretStream

# torchvision's ImageNet statistics: what pretrained backbones expect as input.
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_tensor_dataset(data: ImageSet, rows: bool = False) -> TensorDataset:
    """uint8 NCHW images + labels (+ row numbers with `rows`); conversion to float happens per batch to save memory."""
    images = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2).contiguous()
    extra = (torch.arange(len(data)),) if rows else ()
    return TensorDataset(images, torch.from_numpy(data.labels), *extra)


def normalise(batch: torch.Tensor) -> torch.Tensor:
    return (batch.float().div_(255.0) - IMAGENET_MEAN.to(batch.device)) / IMAGENET_STD.to(batch.device)


def random_dihedral(batch: torch.Tensor, stream: SecretStream) -> torch.Tensor:
    """Per-sample random flips and 90-degree rotation: tissue has no canonical orientation.

    The draws come from the round's secret stream (`stream`), like every random draw of training.
    """
    if batch.shape[0] == 0:
        return batch
    flags = stream.rand(3, batch.shape[0]) < 0.5
    pick = lambda mask, a, b: torch.where(mask.view(-1, 1, 1, 1).to(a.device), a, b)  # noqa: E731
    batch = pick(flags[0], batch.flip(3), batch)
    batch = pick(flags[1], batch.flip(2), batch)
    if batch.shape[2] == batch.shape[3]:
        batch = pick(flags[2], batch.transpose(2, 3), batch)
    return batch
