"""The in-memory form every data source is turned into.

Images are kept as uint8 arrays at the run's `image-size`: 15,000 patches at 64 px are
184 MB, small enough for a site to hold, and decoding JPEGs once instead of every epoch
is what keeps DP training on a CPU fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class DataError(ValueError):
    """Site data is missing, unreadable or inconsistent; the message says what to do."""


@dataclass
class LoadReport:
    """What a loader skipped, so a site can report counts without revealing content.

    `skipped_files` names every unreadable file (for the site's own log); only the counts
    may leave a site. Hidden entries (`.DS_Store`, `.ipynb_checkpoints`, ...) are counted
    apart from unreadable files: they are never data, so they are no sign of a bad export.
    """

    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)
    converted: int = 0  # files whose pixels were converted in any way (named in `conversions`)
    skipped_files: list[str] = field(default_factory=list)
    hidden: int = 0
    hidden_examples: list[str] = field(default_factory=list)
    stain_fallbacks: int = 0  # images stain normalisation could not handle (kept as they were)
    conversions: dict[str, int] = field(default_factory=dict)  # what was done to pixels -> how many images
    conflicting: int = 0  # images dropped: byte-identical copies stored under different labels

    def count(self, conversions: tuple[str, ...] | list[str], images: int = 1) -> None:
        """Count what was done to `images` images' pixels, for the data summary."""
        self.converted += images if conversions else 0
        for name in conversions:
            self.conversions[name] = self.conversions.get(name, 0) + images

    def summary(self) -> str:
        """The conversions as one line for the data summary ('' when every image was used as stored)."""
        return "; ".join(f"{name}: {n}" for name, n in sorted(self.conversions.items()))

    def skip(self, path: str, reason: str, keep: int = 5) -> None:
        self.skipped += 1
        self.skipped_files.append(f"{path}: {reason}")
        if len(self.skipped_examples) < keep:
            self.skipped_examples.append(f"{path}: {reason}")

    def hide(self, path: str, keep: int = 5) -> None:
        self.hidden += 1
        if len(self.hidden_examples) < keep:
            self.hidden_examples.append(path)


@dataclass
class ImageSet:
    """Images (N, H, W, 3 uint8), integer labels, group ids and the class names."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    classes: list[str]
    report: LoadReport = field(default_factory=LoadReport)
    # True when `groups` are patients/slides given by the data (groups.csv, synthetic slides), not
    # one group per image: then patient-level DP is possible and is the default.
    patient_groups: bool = False
    # SHA-256 of each record as stored (`common.data.content`); None: computed from the pixels when asked.
    content: np.ndarray | None = None
    # Records that count (n, patients, sampling rate) but never train: copies of central test images at a
    # deployed site (`common.data.sources.deployed_site`). None: every record trains.
    withheld: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be (N, H, W, 3) uint8, got {self.images.shape} {self.images.dtype}")
        if len(self.labels) != n or len(self.groups) != n:
            raise DataError(f"{n} images but {len(self.labels)} labels and {len(self.groups)} group ids")
        self.labels = self.labels.astype(np.int64, copy=False)
        for name in ("content", "withheld"):
            extra = getattr(self, name)
            if extra is not None and len(extra) != n:
                raise DataError(f"{n} images but {len(extra)} values of {name}")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            bad = sorted(set(self.labels[(self.labels < 0) | (self.labels >= len(self.classes))].tolist()))
            raise DataError(
                f"labels {bad[:10]} are out of range for {len(self.classes)} classes "
                f"({', '.join(self.classes)}); valid labels are 0..{len(self.classes) - 1}"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            self.images[indices], self.labels[indices], self.groups[indices], list(self.classes), self.report,
            self.patient_groups, None if self.content is None else self.content[indices],
            None if self.withheld is None else self.withheld[indices],
        )

    def content_ids(self) -> np.ndarray:
        """Each record's SHA-256 as stored; for images made in memory, of their pixels as an array record."""
        if self.content is None:
            from common.data.content import array_hashes  # noqa: PLC0415 - content imports this module

            self.content = array_hashes(self.images)
        return self.content

    def trainable(self) -> ImageSet:
        """The records that may train (all but `withheld`)."""
        if self.withheld is None or not self.withheld.any():
            return self
        return self.subset(np.flatnonzero(~self.withheld))

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=len(self.classes)).astype(int).tolist()

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1]) if len(self.images) else 0
