"""Write the central test set's image hashes, for the sites to withhold copies of test images from training.

    python -m server.test_hashes --run-config "dataset='/srv/fedpath/central-test'" --out test-hashes.sha256

The file is `sha256sum` output: for an ImageFolder test set, exactly what `sha256sum` prints for each
test file (so the centre can make or check it with coreutils); for an `.npz` one, the hash of each
record's dtype, shape and bytes (`common.data.content`). The hashes are public: they name the centre's
own images, not a patient's. Give the file to every site; its operator sets `test-hashes` in the node
config (docs/DEPLOYMENT.md). What a site does with it, and why crafted hashes reveal nothing beyond
DP: docs/PRIVACY.md, "Test images at the sites".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.config.run_config import ConfigError, RunConfig, load_app_config
from common.data.content import hash_lines
from common.data.imageset import DataError
from common.data.sources import central_test_set
from common.files import atomic_file
from common.paths import REPO


def central_test_hash_lines(config: RunConfig) -> str:
    """The `sha256sum` lines of the run's central test set, one per distinct image."""
    test = central_test_set(config)
    names = [f"central-test/{test.classes[label]}/{i}" for i, label in enumerate(test.labels.tolist())]
    return hash_lines(test.content_ids(), names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.test_hashes", description=__doc__.split("\n")[0])
    parser.add_argument("--run-config", action="append", default=[], metavar="'K=V ...'",
                        help="run-config overrides, as for flwr run (the dataset, test-fraction and seed decide the set)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the sha256sum-format file")
    args = parser.parse_args(argv)
    try:
        text = central_test_hash_lines(load_app_config(REPO / "pyproject.toml", args.run_config))
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with atomic_file(args.out, "w") as handle:
        handle.write(text)
    print(f"wrote {text.count(chr(10))} test-image hashes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
