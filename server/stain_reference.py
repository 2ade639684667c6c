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

from common.config.run_config import ConfigError
from common.data.imageset import DataError
from common.data.stain_handling import fit_reference
from server.public_data import add_public_data_arguments, load_public_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.stain_reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_public_data_arguments(parser, "fit")
    parser.add_argument("--max-images", type=int, default=500, help="patches in the fitted mosaic")
    args = parser.parse_args(argv)
    try:
        reference = fit_reference(load_public_data(args).images.images, args.max_images)
    except (ConfigError, DataError, ValueError, RuntimeError, IndexError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"stain-reference='{reference.as_text()}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
