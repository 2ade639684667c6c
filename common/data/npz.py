"""MedMNIST-format `.npz` files (`train_images`, `train_labels`, `val_*`, `test_*`).

PathMNIST is 9 colorectal tissue classes from NCT-CRC-HE-100K; its official test split is
the external CRC-VAL-HE-7K set. `load_pathmnist` fetches it with the `medmnist` package
where there is network; offline, point `dataset` at a local `pathmnist*.npz`. Files are
checked before use (`common/data/npz_checks.py`): never unpickled, labels 0..K-1 without gaps,
pixel scales stated, oversized images refused.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from common.data.checks import DEFAULT_MAX_IMAGE_PIXELS, few
from common.data.content import array_hashes, conflicting_labels, describe_conflicts
from common.data.decode import fit_rgb
from common.data.imageset import DataError, ImageSet, LoadReport
from common.data.npz_checks import (
    check_image_shape,
    check_label_range,
    check_npz_container,
    classes_from_labels,
    label_vector,
    to_uint8,
)

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


def _to_rgb_batch(
    images: np.ndarray, image_size: int, name: str, path: Path, max_pixels: int, report: LoadReport
) -> np.ndarray:
    check_image_shape(images, name, path, max_pixels)
    images, scale = to_uint8(images, name, path)
    report.count([] if scale.as_stored else [scale.conversion], len(images))
    if images.ndim == 3:  # grayscale (N, H, W)
        images = images[..., None]
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    elif images.shape[-1] == 4:
        alpha = images[..., 3:4].astype(np.float64) / 255.0
        images = (images[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    if images.shape[1:3] == (image_size, image_size):
        return np.ascontiguousarray(images)
    return np.stack([fit_rgb(Image.fromarray(img), image_size) for img in images])


def record_ids(images: np.ndarray) -> np.ndarray:
    """A stable identity per record: BLAKE2b-128 of its stored bytes (as in the file, before any conversion).

    Positions are not identities: with `pool-<i>`, removing record 3 renamed every later record,
    and a keyed train/validation split (`common.data.partition.keyed_train_val`) then moved about
    `val-fraction` of them across. A record's own bytes name it whatever else the file holds, so
    its side depends only on itself and the site's key; identical images share a name and so a
    side (a duplicate never straddles the split).
    """
    rows = np.ascontiguousarray(images).reshape(len(images), -1)
    header = f"{images.dtype.str}{images.shape[1:]}".encode()
    return np.asarray([f"img-{hashlib.blake2b(header + row.tobytes(), digest_size=16).hexdigest()}" for row in rows])


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, never unpickling (a pickle can run code)."""
    check_npz_container(path)
    try:
        with np.load(path, allow_pickle=False) as blob:
            parts = {}
            for key in blob.files:
                try:
                    parts[key] = blob[key]
                except ValueError as err:
                    if "object arrays" not in str(err).lower():
                        raise
                    raise DataError(f"{path}: array {key!r} holds Python objects (pickled), which fedpath never "
                                    "loads since unpickling can run code; store numeric arrays") from None
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"cannot read {path} as an .npz file: {err}") from err
    missing = [k for k in _REQUIRED if k not in parts]
    if missing:
        held = ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in parts.items()) or "nothing"
        raise DataError(f"{path} lacks {missing}; a MedMNIST-format .npz has {', '.join(_REQUIRED)} (+ val_*). "
                        f"It holds: {held}")
    return parts


def load_npz(
    path: Path, image_size: int, classes: list[str] | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[ImageSet, ImageSet]:
    """(pool, test): `train` + `val` pooled for the sites, `test` held out centrally.

    Class names are not stored in MedMNIST files. Given `classes` (the federation's, at a
    deployed site), labels must fit them. Otherwise a file named `pathmnist*` gets
    PathMNIST's names when its labels fit them; any other file's labels must run 0..K-1
    without gaps (`class-0..class-K-1`). MedMNIST publishes no patient ids (a known limitation
    of that benchmark), so each image is its own group, named by its content (`record_ids`):
    removing or adding a record moves no other record across a keyed split.
    """
    if not path.exists():
        raise DataError(f"dataset file {path} does not exist")
    parts = _read_arrays(path)
    splits = [s for s in ("train", "val", "test") if f"{s}_labels" in parts]
    labels = {s: label_vector(parts[f"{s}_labels"], f"{s}_labels", path) for s in splits}
    for s in splits:
        if f"{s}_images" in parts and len(parts[f"{s}_images"]) != len(labels[s]):
            raise DataError(f"{path}: {len(parts[f'{s}_images'])} {s}_images but {len(labels[s])} {s}_labels")
    if classes is None:
        names = PATHMNIST_CLASSES if "pathmnist" in path.name.lower() else []
        classes = classes_from_labels(list(labels.values()), path, names)
    for s in splits:
        check_label_range(labels[s], f"{s}_labels", classes, path)
    pool_splits = ["train"] + (["val"] if "val_images" in parts and "val" in labels else [])
    pool_report = LoadReport()
    pool = ImageSet(
        np.concatenate([_to_rgb_batch(parts[f"{s}_images"], image_size, f"{s}_images", path, max_pixels, pool_report)
                        for s in pool_splits]),
        np.concatenate([labels[s] for s in pool_splits]),
        np.concatenate([record_ids(parts[f"{s}_images"]) for s in pool_splits]),
        list(classes), pool_report,
        content=np.concatenate([array_hashes(parts[f"{s}_images"]) for s in pool_splits]),
    )
    test_report = LoadReport()
    test = ImageSet(
        _to_rgb_batch(parts["test_images"], image_size, "test_images", path, max_pixels, test_report),
        labels["test"],
        np.asarray([f"test-{i}" for i in range(len(labels["test"]))]),
        list(classes), test_report, content=array_hashes(parts["test_images"]),
    )
    pool_names = [f"{s}_images[{i}]" for s in pool_splits for i in range(len(labels[s]))]
    test_names = [f"test_images[{i}]" for i in range(len(test))]
    return _drop_conflicting(pool, pool_names, path), _drop_conflicting(test, test_names, path)


def _drop_conflicting(data: ImageSet, names: list[str], path: Path) -> ImageSet:
    """Byte-identical records under different labels: every copy dropped, each named in the log."""
    mask = conflicting_labels(data.content_ids(), data.labels)
    if not mask.any():
        return data
    copies = describe_conflicts(data.content_ids(), data.labels, names, data.classes, mask)
    for line in copies:
        log.info("dropped from %s (one image under several labels): %s", path, line)
    log.warning("%s: %d records are byte-identical copies stored under different labels, so their class cannot be "
                "known: %s; dropped every copy. Remove the wrong copy to keep the image", path, int(mask.sum()),
                few(copies))
    kept = data.subset(np.flatnonzero(~mask))
    kept.report.conflicting = int(mask.sum())
    return kept


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
