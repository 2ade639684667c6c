"""Fit the run's `stain-reference` on public data the coordinating centre holds.

    python -m server.stain_reference --data /path/to/public-imagefolder
    python -m server.stain_reference --public-share "dataset='../shared/data/lc25000-lung' public-fraction=0.2"

Prints the 8 numbers (torchstain's Macenko fit: H&E matrix, max concentrations) to pass as
`--run-config "stain='normalize' stain-reference='...'"`. Without it, runs use torchstain's own
reference. Never fit it on a site's images: the reference is sent to every site and the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config import ConfigError, load_app_config
from common.data.folder import load_image_folder
from common.data.imageset import DataError
from common.data.sources import public_share
from common.data.stain_handling import fit_reference
from common.paths import REPO



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.stain_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, help="an ImageFolder tree of public data held by the centre")
    source.add_argument("--public-share", metavar="'K=V ...'",
                        help="run-config overrides; fit on that run's public-fraction share of groups")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=500, help="patches in the fitted mosaic")
    args = parser.parse_args(argv)
    try:
        if args.data is not None:
            images = load_image_folder(args.data.resolve(), args.image_size).images
        else:
            config = load_app_config(REPO / "pyproject.toml", [args.public_share, f"image-size={args.image_size}"])
            images = public_share(config).images
        reference = fit_reference(images, args.max_images)
    except (ConfigError, DataError, ValueError, RuntimeError, IndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"stain-reference='{reference.as_text()}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
