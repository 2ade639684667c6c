"""The centre's public data, as the server's offline tools take it on the command line.

`server.pretrain` (a backbone) and `server.stain_reference` (a stain normalisation target) both
learn from data the centre holds and may use freely: an ImageFolder tree, or the public share
of groups that a run config holds out from every simulated site and from the test set. Never a
site's data: sites never send images.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from common.config.run_config import RunConfig, load_app_config
from common.config.stain_settings import parse_reference
from common.data.folder import load_image_folder
from common.data.imageset import ImageSet
from common.data.sources import public_share
from common.data.stain_handling import normalise_images
from common.paths import REPO


@dataclass(frozen=True)
class PublicData:
    images: ImageSet
    described: str  # where it came from, for provenance
    config: RunConfig | None  # the run config of a public share, None for a folder


def add_public_data_arguments(parser: argparse.ArgumentParser, purpose: str) -> None:
    """--data DIR | --public-share 'K=V ...' (exactly one), and --image-size."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="an ImageFolder tree of public data held by the centre")
    source.add_argument("--public-share", metavar="'K=V ...'",
                        help=f"run-config overrides; {purpose} on that run's public-fraction share of groups")
    parser.add_argument("--image-size", type=int, default=64)


def load_public_data(args: argparse.Namespace, *overrides: str) -> PublicData:
    """The data the arguments name; raises ConfigError or DataError with the reason."""
    if args.data is not None:
        folder = args.data.resolve()
        return PublicData(load_image_folder(folder, args.image_size), f"ImageFolder {folder}", None)
    config = load_app_config(REPO / "pyproject.toml", [args.public_share, f"image-size={args.image_size}", *overrides])
    described = (f"public share (public-fraction={config.public_fraction}, seed={config.seed}, "
                 f"test-fraction={config.test_fraction}) of {config.dataset}: groups held out from every "
                 "simulated site and from the test set")
    return PublicData(public_share(config), described, config)


def stain_normalised(public: PublicData, reference: str) -> PublicData:
    """The public images Macenko-normalised to `reference` (the run config's `stain-reference`
    text; "" = torchstain's), as sites running `stain = normalize` will see theirs. A backbone
    pretrained on un-normalised images starts a normalising federation from colours it never saw."""
    images, kept = normalise_images(public.images.images, parse_reference(reference))
    data = public.images
    normalised = ImageSet(images, data.labels, data.groups, data.classes, data.report, data.patient_groups)
    target = reference or "torchstain's reference"
    described = (f"{public.described}, stain-normalised (Macenko, torchstain) to {target}; "
                 f"{kept} of {len(images)} images kept as they were (no stain estimate)")
    return PublicData(normalised, described, public.config)
