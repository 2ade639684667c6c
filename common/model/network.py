"""torchvision ResNets made trainable under Opacus DP-SGD, and what of them trains.

Two things in torchvision's ResNet break Opacus' default `hooks` mode: in-place ReLUs and
the in-place residual addition `out += identity` modify tensors that Opacus' backward hooks
hold views of ("Output 0 of BackwardHookFunction is a view and is being modified
inplace"). `make_dp_compatible` replaces both with out-of-place equivalents and freezes every
BatchNorm into `FrozenStatsBatchNorm` (see `common.model.dp_layers`), so the converted network
computes exactly what the eval-mode torchvision network computes.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Final

import numpy as np
import torch
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, Bottleneck

from common.config.choices import ARCHITECTURE_NAMES, POLICIES
from common.model.dp_layers import ChannelAffine, FrozenStatsBatchNorm

ARCHITECTURES: Final[dict[str, Callable[..., models.ResNet]]] = {
    "resnet18": models.resnet18,
    "resnet34": models.resnet34,
    "resnet50": models.resnet50,
}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "common.config.choices names what common.model builds"


class OutOfPlaceBasicBlock(BasicBlock):
    """torchvision's BasicBlock with the residual addition done out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class OutOfPlaceBottleneck(Bottleneck):
    """torchvision's Bottleneck with the residual addition done out of place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_OUT_OF_PLACE_BLOCKS: Final[dict[type, type]] = {
    BasicBlock: OutOfPlaceBasicBlock,
    Bottleneck: OutOfPlaceBottleneck,
}


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Convert a torchvision ResNet in place so Opacus `hooks` mode can train it.

    Parameter names are kept except that `bnX.weight`/`bnX.bias` become
    `bnX.affine.weight`/`bnX.affine.bias` and the statistics move to `bnX.norm.*`.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, FrozenStatsBatchNorm.from_batchnorm(child))
        elif isinstance(child, nn.ReLU):
            setattr(model, name, nn.ReLU(inplace=False))
        else:
            make_dp_compatible(child)
    replacement = _OUT_OF_PLACE_BLOCKS.get(type(model))
    if replacement is not None:
        # Same attributes and children, only `forward` differs: swapping the class keeps
        # every parameter (and its name) exactly where torchvision put it.
        model.__class__ = replacement
    return model


def build_resnet(
    arch: str,
    num_classes: int,
    backbone_state: Mapping[str, torch.Tensor] | None,
    seed: int,
    scratch_statistics: bool = True,
) -> nn.Module:
    """A DP-compatible ResNet with a new `num_classes` head.

    `backbone_state` is a torchvision-format state dict (ImageNet or `server.pretrain`
    output); its `fc.*` entries are ignored because the head is always new for the task.
    Without one (training from scratch) the BatchNorm statistics are estimated from
    Gaussian noise (`data_free_batchnorm_statistics`). The random parts are drawn from
    `seed`, so the server and every site build bit-identical frozen layers without
    sending them over the network. (`scratch_statistics=False` skips the estimate, for
    callers that only need the architecture, such as byte counts.)
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; valid values: {', '.join(ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = ARCHITECTURES[arch](weights=None)
        if backbone_state is not None:
            load_backbone(net, backbone_state, arch)
        elif scratch_statistics:
            data_free_batchnorm_statistics(net)
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    finally:
        torch.random.set_rng_state(generator_state)
    net.eval()  # frozen statistics: train() and eval() compute the same thing
    return make_dp_compatible(net)


@torch.no_grad()
def data_free_batchnorm_statistics(net: nn.Module, batches: int = 4, batch_size: int = 16, size: int = 64) -> None:
    """Give a randomly initialised network BatchNorm statistics without touching any data.

    torchvision initialises running statistics to mean 0 / variance 1, so a frozen scratch
    network does not normalise at all and activations grow layer by layer until the head
    sees features too large to train. Running standard-normal noise (the scale of
    normalised images) through it in train mode yields statistics that keep every layer
    near unit scale. No site data is used, so this costs no privacy. Its effect on
    accuracy is measured in docs/BENCHMARKS.md.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all noise batches
        m.train()
    for _ in range(batches):
        net(torch.randn(batch_size, 3, size, size))
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)


def load_backbone(net: models.ResNet, state: Mapping[str, torch.Tensor], arch: str) -> None:
    """Load a torchvision-format state dict into `net`, all but the classification head."""
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(expected) - set(backbone))
    unexpected = sorted(set(backbone) - set(expected))
    wrong_shape = sorted(
        k for k in set(expected) & set(backbone) if tuple(expected[k].shape) != tuple(backbone[k].shape)
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"these weights do not fit a torchvision {arch}: "
            f"{len(missing)} missing tensors (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong_shape)} of the wrong shape (e.g. {wrong_shape[:3]}); "
            "is it a checkpoint of another architecture?"
        )
    net.load_state_dict(backbone, strict=False)


def _is_trainable(name: str, module_path: str, module: nn.Module, policy: str) -> bool:
    if policy == "full":
        return True
    if module_path == "fc" or module_path.startswith("fc."):
        return True
    if policy == "head":
        return False
    if policy == "last-block":
        return module_path.startswith("layer4")
    if policy == "norm-head":
        return isinstance(module, ChannelAffine)
    raise ValueError(f"unknown policy {policy!r}; valid values: {', '.join(POLICIES)}")


def apply_policy(model: nn.Module, policy: str) -> nn.Module:
    """Freeze everything the trainable-parameter `policy` does not train."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; valid values: {', '.join(POLICIES)}")
    for module_path, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            param.requires_grad_(_is_trainable(name, module_path, module, policy))
    return model


def trainable_names(model: nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def get_trainable_state(model: nn.Module) -> OrderedDict[str, np.ndarray]:
    """The tensors that travel between server and sites (copies, float32 numpy)."""
    return OrderedDict(
        (name, p.detach().cpu().numpy().astype(np.float32, copy=True))
        for name, p in model.named_parameters()
        if p.requires_grad
    )


def set_trainable_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Overwrite the trainable tensors; names, shapes and dtypes must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(set(params) - set(state))
    extra = sorted(set(state) - set(params))
    if missing or extra:
        raise ValueError(
            f"trainable tensors do not match the model: missing {missing[:5]}, extra {extra[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            value = np.asarray(state[name])
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"tensor {name!r} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))


def frozen_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every tensor that does not travel (frozen weights and statistics).

    Server and sites must hold identical frozen layers for averaged updates to make
    sense; comparing this fingerprint turns a silent mismatch (another weights file,
    another torchvision) into a clear error.
    """
    digest = hashlib.sha256()
    trainable = set(trainable_names(model))
    for name, tensor in sorted(model.state_dict().items()):
        if name in trainable:
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def count_bytes(state: Mapping[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).nbytes for v in state.values()))
