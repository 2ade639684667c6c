"""A deployed site's `.npz` split is keyed by each record's own identity, not its position.

Attack on the neighbouring datasets: a record removed from (or added to) a site's `.npz` export must
not move any OTHER record between training and validation. With groups named by position
(`pool-<i>`), removing record 3 renamed every later record and moved about `val-fraction` of them
across the keyed split (74 of ~500 in the review). Records are named by their bytes now.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.npz import load_npz, record_ids
from common.data.sources import deployed_site

KEY = bytes(range(32))
CLASSES = ["a", "b", "c"]


def _export(path: Path, images: np.ndarray, labels: np.ndarray, val_from: int) -> Path:
    """A MedMNIST-format file: the site's records split over train_* and val_*, plus a test split."""
    np.savez(path, train_images=images[:val_from], train_labels=labels[:val_from, None],
             val_images=images[val_from:], val_labels=labels[val_from:, None],
             test_images=images[:4], test_labels=labels[:4, None])
    return path


def _sides(path: Path) -> dict[bytes, bool]:
    """Every record of a deployed site's data (by its pixels) -> True when it is in validation."""
    data = deployed_site(path, 16, 0.3, KEY, classes=CLASSES)
    sides = {img.tobytes(): False for img in data.train.images}
    sides.update({img.tobytes(): True for img in data.val.images})
    assert len(sides) == len(data.train) + len(data.val)  # all records distinct: each is its own
    return sides


def test_removing_or_adding_one_record_moves_no_other_record(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    n = 500
    images = rng.integers(0, 256, (n + 1, 16, 16, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n + 1)
    before = _sides(_export(tmp_path / "before.npz", images[:n], labels[:n], 400))
    assert 0.2 < np.mean(list(before.values())) < 0.4  # the split is real (val-fraction 0.3)
    removed = np.delete(np.arange(n), 3)  # record 3 leaves the export; every later record shifts
    after_removal = _sides(_export(tmp_path / "removed.npz", images[removed], labels[removed], 399))
    assert len(after_removal) == n - 1
    assert [r for r in after_removal if after_removal[r] != before[r]] == []
    added = _sides(_export(tmp_path / "added.npz", np.insert(images[:n], 0, images[n], axis=0),
                           np.insert(labels[:n], 0, labels[n]), 401))  # a new record first
    assert [r for r in before if added[r] != before[r]] == []


def test_a_record_is_named_by_its_stored_bytes() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    ids = record_ids(images)
    assert len(set(ids)) == 6
    np.testing.assert_array_equal(record_ids(images[[2, 0]]), ids[[2, 0]])  # the same, wherever it sits
    duplicated = record_ids(np.concatenate([images, images[:1]]))
    assert duplicated[-1] == duplicated[0]  # identical images share a group, and so a side


def test_the_pool_groups_are_the_record_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    images = rng.random((10, 8, 8)).astype(np.float32)  # grayscale floats: named before any conversion
    labels = rng.integers(0, 3, 10)
    pool, _ = load_npz(_export(tmp_path / "x.npz", images, labels, 7), 16, classes=CLASSES)
    np.testing.assert_array_equal(pool.groups, np.concatenate([record_ids(images[:7]), record_ids(images[7:])]))
    assert not pool.patient_groups  # still one record per group: patch-level DP, as before
