"""The rules hospital exports break, one small function each; the loaders call them.

Data that is wrong in a way the loader cannot see becomes a model that is wrong in a way
nobody sees: 256 "classes" from labels that run to 255, black images from floats in
[0, 1], every image twice through a symlink. So each rule here either refuses with a
`DataError` naming the file (or line, or folder) and the fix, or, where the data is usable,
says in the log what was assumed. Messages go to the site's own log only; what a site
sends away is counts (see docs/PRIVACY.md).

Every message here is listed with its fix in docs/TROUBLESHOOTING.md ("Site data").

The rules live by what they look at: this module holds what every loader shares (the pixel
limit, the whole dataset's split check); `common/data/tree_checks.py` an ImageFolder tree,
`common/data/groups_csv.py` a `path,group` file, `common/data/npz_checks.py` an `.npz` file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.data.imageset import DataError

MAX_PIXELS_KEY = "max-image-pixels"
DEFAULT_MAX_IMAGE_PIXELS = 80_000_000  # ~8,900 px square: far above any patch, below PIL's own bomb limit
EXAMPLES = 5  # how many offending files, rows or values a message names


class FileProblem(ValueError):
    """One file cannot be used; the loader skips it (strict=false) or stops (strict=true)."""



def few(items: Sequence[object], limit: int = EXAMPLES) -> str:
    """The first few items and how many there are, so a message names examples without flooding the log."""
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")



def check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    """Refuse an image larger than `max-image-pixels` before it is decoded into memory."""
    width, height = size
    if width * height > max_pixels:
        raise FileProblem(
            f"{width} x {height} = {width * height:,} pixels, more than {MAX_PIXELS_KEY}={max_pixels:,} "
            f"(raise {MAX_PIXELS_KEY} if this is a real image, or export it smaller)"
        )



# --- the whole dataset ---------------------------------------------------------------------


def check_splittable(labels: np.ndarray, groups: np.ndarray, classes: Sequence[str], where: str) -> None:
    """Refuse a pool no group-aware test hold-out can serve, naming the real cause.

    A group (patient, slide) is never split, so a class needs images from 2 or more groups
    to be both in the central test set and at the sites. Without this, such data fails
    later with a message about test-fraction, which is not what is wrong.
    """
    if len(labels) == 0:
        raise DataError(f"{where} holds no images")
    present = sorted(set(labels.tolist()))
    if len(present) < 2:
        raise DataError(f"{where}: only class {classes[present[0]]!r} has images; a classifier needs images of "
                        "at least 2 classes")
    lonely = [classes[c] for c in present if len(set(groups[labels == c].tolist())) < 2]
    if not lonely:
        return
    layout = (" Most classes hold a single group: if each sub-folder is one patient or slide rather than one "
              "class, arrange the images in one sub-folder per class (and name patients in groups.csv)."
              if len(lonely) > len(present) / 2 else "")
    raise DataError(
        f"{where}: {len(lonely)} of {len(present)} classes have images of only one group (patient or slide): "
        f"{few(lonely)}. A group is never split, so such a class cannot be both in the held-out test set and "
        f"at the sites: add images of more patients, or check groups.csv.{layout}"
    )
