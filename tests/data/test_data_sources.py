"""Loading site data: synthetic generator, ImageFolder trees and MedMNIST .npz files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.data.folder import load_image_folder
from common.data.imageset import DataError
from common.data.npz import PATHMNIST_CLASSES, load_npz
from common.data.sources import check_classes
from common.data.stain import apply_stain_shift
from common.data.synthetic import CLASSES, make_synthetic


def test_synthetic_is_deterministic_grouped_and_balanced() -> None:
    a, b = make_synthetic(200, 32, seed=1), make_synthetic(200, 32, seed=1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, make_synthetic(200, 32, seed=2).images)
    assert a.images.shape == (200, 32, 32, 3) and a.classes == CLASSES
    counts = np.bincount(a.labels)
    assert counts.min() > 0.2 * 200 / len(CLASSES) * 3  # every class well represented
    assert len(set(a.groups)) < 200 / 2  # images come in groups (slides)
    for g in set(a.groups):
        assert len(set(a.labels[a.groups == g])) == 1


def _tree(root: Path, classes: dict[str, int], size: tuple[int, int] = (40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_image_folder_converts_modes_and_sizes_and_caches(tmp_path: Path) -> None:
    root = _tree(tmp_path / "site", {"benign": 3, "tumour": 2})
    Image.fromarray(np.full((50, 50), 128, np.uint8), mode="L").save(root / "benign" / "gray.png")
    Image.fromarray(np.full((20, 60, 4), 200, np.uint8), mode="RGBA").save(root / "tumour" / "rgba.png")
    Image.fromarray(np.full((30, 30), 65535, np.uint16)).save(root / "tumour" / "deep.png")
    data = load_image_folder(root, 24)
    assert data.classes == ["benign", "tumour"] and len(data) == 8
    assert data.images.shape == (8, 24, 24, 3) and data.images.dtype == np.uint8
    assert data.report.converted == 3
    deep = data.images[list(data.groups).index("tumour/deep.png")]
    assert deep.min() == 255  # 16-bit full scale is white, not clipped noise
    again = load_image_folder(root, 24)  # served from the cache
    assert np.array_equal(again.images, data.images)


def test_image_folder_skips_and_counts_bad_files_or_fails_in_strict_mode(tmp_path: Path) -> None:
    root = _tree(tmp_path / "site", {"a": 2, "b": 2})
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    data = load_image_folder(root, 16)
    assert len(data) == 4 and data.report.skipped == 3
    assert any("empty.png" in e for e in data.report.skipped_examples)
    with pytest.raises(DataError, match="strict=true"):
        load_image_folder(root, 16, strict=True)


def test_image_folder_uses_groups_csv(tmp_path: Path) -> None:
    root = _tree(tmp_path / "site", {"a": 2, "b": 2})
    (root / "groups.csv").write_text("path,group\na/0.png,p1\na/1.png,p1\nb/0.png,p2\nb/1.png,p3\n")
    data = load_image_folder(root, 16)
    assert sorted(data.groups.tolist()) == ["p1", "p1", "p2", "p3"]
    (root / "groups.csv").write_text("path,group\na/0.png,p1\n")
    with pytest.raises(DataError, match="have no group"):
        load_image_folder(root, 16, use_cache=False)


def test_missing_data_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 16)


def _npz(path: Path, n: int = 12, classes: int = 9, size: int = 28, bad_label: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, (n, 1))
    if bad_label is not None:
        labels[0, 0] = bad_label
    parts = {}
    for split in ("train", "val", "test"):
        parts[f"{split}_images"] = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
        parts[f"{split}_labels"] = labels
    np.savez(path, **parts)
    return path


def test_npz_pools_train_and_val_and_keeps_the_official_test(tmp_path: Path) -> None:
    pool, test = load_npz(_npz(tmp_path / "pathmnist_28.npz"), 32)
    assert len(pool) == 24 and len(test) == 12 and pool.classes == PATHMNIST_CLASSES
    assert pool.images.shape[1:] == (32, 32, 3)


def test_npz_with_labels_out_of_range_is_refused(tmp_path: Path) -> None:
    path = _npz(tmp_path / "pathmnist_28.npz", bad_label=12)
    with pytest.raises(DataError, match=r"outside 0\.\.8"):
        load_npz(path, 28, classes=list(PATHMNIST_CLASSES))


def test_npz_missing_arrays_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((1, 2, 2, 3), np.uint8))
    with pytest.raises(DataError, match="lacks"):
        load_npz(tmp_path / "x.npz", 28)


def test_class_mismatch_names_unexpected_and_missing() -> None:
    with pytest.raises(DataError, match=re.escape("unexpected classes ['c']")) as info:
        check_classes(["a", "c"], ["a", "b"], "site X")
    assert "unexpected classes ['c']" in str(info.value) and "missing classes ['b']" in str(info.value)


def test_stain_shift_is_deterministic_per_site_and_off_at_zero() -> None:
    images = make_synthetic(10, 16, 0).images
    assert apply_stain_shift(images, 0.0, 1, 0) is images
    a, b = apply_stain_shift(images, 0.3, 1, 0), apply_stain_shift(images, 0.3, 1, 0)
    assert np.array_equal(a, b) and not np.array_equal(a, apply_stain_shift(images, 0.3, 1, 1))
    assert np.abs(a.astype(int) - images.astype(int)).mean() > 3
