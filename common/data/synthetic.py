"""A deterministic, histology-like synthetic dataset: the embedded default and test fixture.

Each image is painted in optical-density space with the standard haematoxylin and eosin
stain vectors (Ruifrok & Johnston 2001), so colours look like H&E. Four tissue classes
differ in texture the way real ones do, with overlapping parameter ranges so that the task
is learnable but not trivial:

* adipose: large clear vacuoles with thin eosin membranes
* stroma: oriented eosin fibres with a few elongated nuclei
* lymphocytes: many small, round, dark nuclei
* tumour: crowded, large, irregular nuclei

Images come in groups ("slides") of 3-8 patches that share stain intensity, so splits must
be group-aware exactly as with real patient data. It is for smoke runs and tests only,
never for published accuracy.
"""

from __future__ import annotations

import numpy as np

from common.data.imageset import ImageSet

CLASSES = ["adipose", "stroma", "lymphocytes", "tumour"]
_H_OD = np.array([0.65, 0.70, 0.29])  # haematoxylin optical density per RGB channel
_E_OD = np.array([0.07, 0.99, 0.11])  # eosin


def _disks(rng: np.random.Generator, size: int, count: int, radius: tuple[float, float], elong: float) -> np.ndarray:
    """Soft-edged ellipses (nuclei or vacuoles) as a density map in [0, 1]."""
    if count == 0:
        return np.zeros((size, size))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0, size, count).astype(np.float32), rng.uniform(0, size, count).astype(np.float32)
    r = (rng.uniform(*radius, count) * size).astype(np.float32)
    angle = rng.uniform(0, np.pi, count).astype(np.float32)
    stretch = (1.0 + elong * rng.uniform(0.5, 1.0, count)).astype(np.float32)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = (dx * cos + dy * sin) / stretch[:, None, None], (-dx * sin + dy * cos) * stretch[:, None, None] ** 0.3
    dist = np.sqrt(u * u + v * v)
    soft = np.clip((r[:, None, None] - dist) / 1.2 + 0.5, 0.0, 1.0)  # anti-aliased edge
    return soft.max(axis=0)


def _paint(rng: np.random.Generator, label: int, size: int, stain: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    eosin = 0.35 + 0.08 * np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(0, 1)))
    haem = np.zeros((size, size))
    if label == 0:  # adipose
        vac = _disks(rng, size, int(rng.integers(3, 8)), (0.10, 0.22), 0.3)
        eosin = eosin * (1 - 0.9 * vac) + 0.25 * np.clip(vac * (1 - vac) * 4, 0, 1)
        haem = 0.9 * _disks(rng, size, int(rng.integers(0, 4)), (0.02, 0.04), 0.5)
    elif label == 1:  # stroma
        theta = rng.uniform(0, np.pi)
        proj = xx * np.cos(theta) + yy * np.sin(theta)
        eosin = 0.45 + 0.25 * np.sin(2 * np.pi * rng.uniform(6, 12) * proj + rng.uniform(0, 6)) ** 2
        haem = 0.9 * _disks(rng, size, int(rng.integers(3, 12)), (0.015, 0.03), 2.5)
    elif label == 2:  # lymphocytes
        haem = 1.2 * _disks(rng, size, int(rng.integers(30, 70)), (0.02, 0.035), 0.1)
    else:  # tumour
        haem = rng.uniform(0.7, 1.1) * _disks(rng, size, int(rng.integers(15, 35)), (0.035, 0.07), 0.8)
    od = haem[..., None] * _H_OD * stain[0] + eosin[..., None] * _E_OD * stain[1]
    od += rng.normal(0, 0.04, od.shape)
    rgb = 255.0 * np.exp(-np.clip(od, 0, None))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def make_synthetic(num_images: int, image_size: int, seed: int) -> ImageSet:
    """`num_images` patches in groups of 3-8, classes balanced over groups."""
    rng = np.random.default_rng(seed)
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(num_images, dtype=np.int64)
    groups = np.empty(num_images, dtype=object)
    index, group = 0, 0
    while index < num_images:
        label = group % len(CLASSES)
        stain = rng.normal(1.0, 0.12, size=2).clip(0.6, 1.4)  # slide-level staining intensity
        for _ in range(min(int(rng.integers(3, 9)), num_images - index)):
            images[index] = _paint(rng, label, image_size, stain)
            labels[index], groups[index] = label, f"slide-{group:05d}"
            index += 1
        group += 1
    return ImageSet(images, labels, groups.astype(str), list(CLASSES), patient_groups=True)
