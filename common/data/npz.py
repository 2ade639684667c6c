"""MedMNIST-format `.npz` files (`train_images`, `train_labels`, `val_*`, `test_*`).

PathMNIST is 9 colorectal tissue classes from NCT-CRC-HE-100K; its official test split is
the external CRC-VAL-HE-7K set. `load_pathmnist` fetches it with the `medmnist` package
where there is network; offline, point `dataset` at a local `pathmnist*.npz`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.folder import to_rgb_array
from common.data.imageset import DataError, ImageSet

log = logging.getLogger("fedpath.data")

PATHMNIST_CLASSES = [
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
]
_REQUIRED = ("train_images", "train_labels", "test_images", "test_labels")


def _to_rgb_batch(images: np.ndarray, image_size: int) -> np.ndarray:
    if images.ndim == 3:  # grayscale (N, H, W)
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"expected images of shape (N, H, W[, 1|3|4]), got {images.shape}")
    if images.dtype != np.uint8:
        top = 65535.0 if images.max(initial=0) > 255 else 255.0
        images = np.clip(images.astype(np.float64) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        alpha = images[..., 3:4].astype(np.float64) / 255.0
        images = (images[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if images.shape[1:3] == (image_size, image_size):
        return np.ascontiguousarray(images)
    return np.stack([to_rgb_array(Image.fromarray(img), image_size)[0] for img in images])


def _labels(raw: np.ndarray, name: str, classes: list[str], path: Path) -> np.ndarray:
    labels = np.asarray(raw).reshape(len(raw), -1)[:, 0].astype(np.int64)
    bad = labels[(labels < 0) | (labels >= len(classes))]
    if len(bad):
        raise DataError(
            f"{path}: {name} holds labels {sorted(set(bad.tolist()))[:10]} outside 0..{len(classes) - 1}; "
            f"the federation has {len(classes)} classes ({', '.join(classes)})"
        )
    return labels


def load_npz(path: Path, image_size: int, classes: list[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """(pool, test): `train` + `val` pooled for the sites, `test` held out centrally.

    Class names are not stored in MedMNIST files; PathMNIST's are used when the label
    range fits 9 classes, otherwise `class-0..class-K`. Each image is its own group
    because MedMNIST publishes no patient ids (a known limitation of that benchmark).
    """
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    try:
        blob = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} as an .npz file: {err}") from err
    with blob:
        missing = [k for k in _REQUIRED if k not in blob.files]
        if missing:
            raise DataError(f"{path} lacks {missing}; a MedMNIST-format .npz has {', '.join(_REQUIRED)} (+ val_*)")
        parts = {k: blob[k] for k in blob.files}
    if classes is None:
        top = max(int(np.max(parts[f"{s}_labels"], initial=0)) for s in ("train", "val", "test") if f"{s}_labels" in parts)
        classes = list(PATHMNIST_CLASSES) if top < len(PATHMNIST_CLASSES) and "pathmnist" in path.name.lower() else [
            f"class-{i}" for i in range(top + 1)
        ]
    pool_images = [parts["train_images"]] + ([parts["val_images"]] if "val_images" in parts else [])
    pool_labels = [parts["train_labels"]] + ([parts["val_labels"]] if "val_labels" in parts else [])
    pool = ImageSet(
        _to_rgb_batch(np.concatenate(pool_images), image_size),
        _labels(np.concatenate(pool_labels), "train/val labels", classes, path),
        np.asarray([f"pool-{i}" for i in range(sum(len(x) for x in pool_labels))]),
        list(classes),
    )
    test = ImageSet(
        _to_rgb_batch(parts["test_images"], image_size),
        _labels(parts["test_labels"], "test_labels", classes, path),
        np.asarray([f"test-{i}" for i in range(len(parts["test_labels"]))]),
        list(classes),
    )
    return pool, test


def load_pathmnist(image_size: int, root: Path | None = None) -> tuple[ImageSet, ImageSet]:
    """PathMNIST through the `medmnist` package (downloads where there is network)."""
    size = min((s for s in (28, 64, 128, 224) if s >= image_size), default=224)
    try:
        import medmnist  # noqa: PLC0415 - optional dependency
    except ImportError as err:
        raise DataError(
            "dataset=pathmnist needs the medmnist package (pip install medmnist), or set dataset to a "
            "local PathMNIST .npz file (e.g. pathmnist_64.npz from https://zenodo.org/records/10519652)"
        ) from err
    root = root or Path.home() / ".medmnist"
    root.mkdir(parents=True, exist_ok=True)
    filename = "pathmnist.npz" if size == 28 else f"pathmnist_{size}.npz"
    target = root / filename
    if not target.exists():
        try:
            medmnist.PathMNIST(split="test", download=True, root=str(root), size=size)
        except Exception as err:  # noqa: BLE001 - medmnist raises bare Exceptions offline
            raise DataError(
                f"could not download PathMNIST ({filename}) into {root}: {err}. Offline, download "
                f"{filename} from https://zenodo.org/records/10519652 on a machine with network, "
                f"copy it to {target}, or set dataset to its path"
            ) from err
    return load_npz(target, image_size, classes=list(PATHMNIST_CLASSES))
