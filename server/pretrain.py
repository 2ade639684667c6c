"""Source-domain pretraining at the coordinating centre, on public data it holds.

    python -m server.pretrain --data /path/to/public-imagefolder --out weights/resnet18-public.pth
    python -m server.pretrain --public-share "dataset='../shared/data/lc25000-lung' public-fraction=0.2" \\
        --out weights/resnet18-lc25000-public.pth
    python -m server.pretrain --data DIR --stain-normalize "" --out weights/resnet18-macenko.pth

With `--stain-normalize [REFERENCE]` the public images are first Macenko-normalised to the
reference the federation will distribute (`stain-reference`), so a federation with
`stain = normalize` starts from a backbone that has seen normalised colours: measured on
LC25000 (docs/BENCHMARKS.md, stain-strategy), a backbone pretrained on un-normalised images
drops from 88.8% to 42.2% when the test set is normalised.

ImageNet weights cannot be downloaded everywhere; a centre can instead pretrain the
backbone (non-privately: the data is public) on pathology it may share, and the federation
then fine-tunes from it with `weights=<file>`. With `--public-share`, the images are exactly
the `public-fraction` of groups that `common.data.sources` holds out from every simulated
hospital and from the test set, so no site's data is in the backbone.

Writes the torchvision-format state dict, `<out>.sha256` (checked whenever the file is
used) and `<out>.json` (what it was trained on: the report quotes it). It is never
described as ImageNet: its provenance is what the JSON says.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.config.run_config import ConfigError
from common.config.stain_settings import stain_problems
from common.data.imageset import DataError, ImageSet
from common.data.partition import split_train_val
from common.files import atomic_file, atomic_write_json, atomic_write_text
from common.logging_setup import setup_logging
from common.model.inputs import as_tensor_dataset, device, normalise, random_dihedral
from common.model.network import ARCHITECTURES, load_backbone
from common.model.weights import WeightsError, resolve_weights, sha256_of
from common.privacy.randomness import public_randomness
from common.progress import progress
from common.versions import versions
from server.public_data import add_public_data_arguments, load_public_data, stain_normalised

log = logging.getLogger("fedpath.pretrain")


def pretrain(
    data: ImageSet, arch: str, epochs: int, batch_size: int, lr: float, seed: int, init_state: dict | None,
    val_fraction: float = 0.1,
) -> tuple[nn.Module, dict[str, Any]]:
    """Ordinary (non-private) supervised training of a torchvision ResNet, BatchNorm included."""
    torch.manual_seed(seed)
    net = ARCHITECTURES[arch](weights=None)
    if init_state is not None:
        load_backbone(net, init_state, arch)
    net.fc = nn.Linear(net.fc.in_features, len(data.classes))
    train_idx, val_idx = split_train_val(data.groups, data.labels, np.arange(len(data)), len(data.classes),
                                         val_fraction, seed, site=0)
    train, val = data.subset(train_idx), data.subset(val_idx)
    dev = device()
    net.to(dev)
    generator = torch.Generator().manual_seed(seed)  # public data, public seed: reproducible by design
    flips = public_randomness(f"pretrain-{seed}").stream("augmentation")
    loader = torch.utils.data.DataLoader(as_tensor_dataset(train), batch_size=batch_size, shuffle=True,
                                         generator=generator, drop_last=len(train) > batch_size)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    history = []
    for epoch in range(epochs):
        net.train()
        losses = []
        for images, labels in progress(loader, desc=f"pretrain epoch {epoch + 1}/{epochs}", unit="batch"):
            images = random_dihedral(images.to(dev), flips)
            loss = nn.functional.cross_entropy(net(normalise(images)), labels.to(dev))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        accuracy = _accuracy(net, val) if len(val) else float("nan")
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_accuracy": accuracy})
        log.info("epoch %d/%d: train loss %.3f, validation accuracy %.3f", epoch + 1, epochs, np.mean(losses), accuracy)
    net.eval()
    return net.cpu(), {"train_images": len(train), "val_images": len(val), "history": history}


@torch.no_grad()
def _accuracy(net: nn.Module, data: ImageSet) -> float:
    net.eval()
    correct = 0
    for images, labels in torch.utils.data.DataLoader(as_tensor_dataset(data), batch_size=256):
        correct += int((net(normalise(images.to(device()))).argmax(1).cpu() == labels).sum())
    return correct / len(data)


def write_weights(net: nn.Module, out: Path, provenance: dict[str, Any]) -> str:
    """The state dict, its SHA-256 sidecar and a provenance JSON; returns the SHA-256."""
    with atomic_file(out, "wb") as handle:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, handle)
    digest = sha256_of(out)
    atomic_write_text(out.with_name(out.name + ".sha256"), f"{digest}  {out.name}\n")
    atomic_write_json(out.with_name(out.name + ".json"), {**provenance, "sha256": digest})
    return digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_public_data_arguments(parser, "pretrain")
    parser.add_argument("--out", type=Path, required=True, help="output .pth (plus .sha256 and .json beside it)")
    parser.add_argument("--arch", default="resnet18", choices=sorted(ARCHITECTURES))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", default="auto", help="starting weights: auto, imagenet, none or a .pth path")
    parser.add_argument("--stain-normalize", metavar="REFERENCE", nargs="?", const="", default=None,
                        help="pretrain on the images Macenko-normalised to REFERENCE (the run's stain-reference; "
                             "empty: torchstain's), for federations that run with stain='normalize'")
    args = parser.parse_args(argv)
    setup_logging()
    if args.stain_normalize is not None and (problems := stain_problems("normalize", args.stain_normalize)):
        print("error: --stain-normalize: " + "; ".join(problems), file=sys.stderr)
        return 2
    started = time.time()
    try:
        public = load_public_data(args, f"arch='{args.arch}'")
        if args.stain_normalize is not None:
            public = stain_normalised(public, args.stain_normalize)
        data, described = public.images, public.described
        init_source, init_state = resolve_weights(args.init, args.arch, download=args.init == "imagenet")
    except (ConfigError, DataError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("pretraining %s on %d images (%d groups) of %s, from %s", args.arch, len(data),
             len(set(data.groups.tolist())), described, init_source.description)
    net, stats = pretrain(data, args.arch, args.epochs, args.batch_size, args.lr, args.seed, init_state)
    provenance = {
        "description": (f"{args.arch} pretrained (non-private) by server.pretrain on {len(data)} images, "
                        f"{len(set(data.groups.tolist()))} groups of {described}; starting from "
                        f"{init_source.description}. Not ImageNet weights."),
        "arch": args.arch, "classes": data.classes, "image_size": args.image_size, "epochs": args.epochs,
        "seed": args.seed, "init": init_source.as_dict(), "data": described, "images": len(data),
        "groups": len(set(data.groups.tolist())), "seconds": round(time.time() - started, 1),
        "versions": versions(), **stats,
    }
    digest = write_weights(net, args.out, provenance)
    print(f"wrote {args.out} (SHA-256 {digest}); use it with --run-config \"weights='{args.out}'\"")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
