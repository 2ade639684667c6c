"""The on-disk dataset formats, behind one registry: the one place a new format is added.

A `dataset` path (simulation, the server's test set) and a site's `data-path` (deployment) are
read by the first format in `FORMATS` that claims the path; the ImageFolder tree, last, claims
every other path, so its own messages ("does not exist", "is not a directory") say what is wrong
with a path nothing else claims. Every caller (`common.data.sources` for simulation and
deployment, the site launcher's pre-flight) asks this module, never a file suffix.

To add a format: write its loader (`common/data/<format>.py`, its rules in `<format>_checks.py`),
wrap it in a `DataFormat` below and put it in `FORMATS` before `IMAGE_FOLDER`. The loader returns
`(pool, official test set or None)`: an official test set is held out centrally in simulation and
ignored at a deployed site (whose whole file is its pool).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.data.checks import DEFAULT_MAX_IMAGE_PIXELS
from common.data.folder import load_image_folder
from common.data.imageset import ImageSet
from common.data.npz import load_npz

Loaded = tuple[ImageSet, ImageSet | None]  # (pool, official test set or None)


@dataclass(frozen=True)
class LoadOptions:
    """What every loader is told; a format ignores what it has no use for."""

    image_size: int
    strict: bool = False
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    groups_csv: Path | None = None
    classes: tuple[str, ...] | None = None  # the federation's class list (a deployed site), None in simulation


@dataclass(frozen=True)
class DataFormat:
    """One way of storing a dataset: which paths it reads and how."""

    name: str
    described: str  # as messages name it: "an .npz file"
    is_file: bool  # a single file (else a directory)
    claims: Callable[[Path], bool]
    load: Callable[[Path, LoadOptions], Loaded]


def _load_npz(path: Path, options: LoadOptions) -> Loaded:
    classes = list(options.classes) if options.classes else None
    return load_npz(path, options.image_size, classes, max_pixels=options.max_pixels)


def _load_folder(path: Path, options: LoadOptions) -> Loaded:
    pool = load_image_folder(path, options.image_size, options.groups_csv, strict=options.strict,
                             max_pixels=options.max_pixels, known_classes=options.classes)
    return pool, None


NPZ = DataFormat("npz", "an .npz file", True, lambda path: path.suffix == ".npz", _load_npz)
IMAGE_FOLDER = DataFormat("imagefolder", "an ImageFolder directory", False, lambda path: True, _load_folder)
FORMATS: tuple[DataFormat, ...] = (NPZ, IMAGE_FOLDER)  # the first that claims a path reads it


def format_for(path: Path) -> DataFormat:
    """The format that reads `path` (the ImageFolder tree when no other claims it)."""
    return next(f for f in FORMATS if f.claims(path))


def load_dataset(path: Path, options: LoadOptions) -> Loaded:
    """(pool, official test set or None) of the dataset at `path`, in whatever format it is."""
    return format_for(path).load(path, options)


def described(formats: tuple[DataFormat, ...] = FORMATS, last: str = "or") -> str:
    """'an .npz file or an ImageFolder directory': the formats as a message names them."""
    names = [f.described for f in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


def file_formats() -> tuple[DataFormat, ...]:
    return tuple(f for f in FORMATS if f.is_file)
