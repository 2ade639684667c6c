"""Group-aware, deterministic splitting across test set, sites and local validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config.run_config import RunConfig
from common.data.folder import read_groups_csv
from common.data.partition import holdout_test, partition_sites, split_train_val
from common.data.sources import all_simulated_sites, central_test_set
from tests.conftest import tiny_run_config


def _synthetic_groups(num_groups: int = 120, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, num_groups)
    groups = np.repeat([f"g{i}" for i in range(num_groups)], sizes)
    labels = np.repeat(np.arange(num_groups) % classes, sizes)
    return groups, labels


def _label_skew(groups: np.ndarray, labels: np.ndarray, shares: list[np.ndarray], classes: int) -> float:
    """Mean total-variation distance between each site's label mix and the overall mix."""
    overall = np.bincount(labels, minlength=classes) / len(labels)
    dists = [0.5 * np.abs(np.bincount(labels[s], minlength=classes) / len(s) - overall).sum() for s in shares]
    return float(np.mean(dists))


def _assert_disjoint_groups(groups: np.ndarray, parts: list[np.ndarray]) -> None:
    seen: set[str] = set()
    for part in parts:
        mine = set(groups[part].tolist())
        assert not mine & seen, "a group straddles two parts"
        seen |= mine


@pytest.mark.parametrize("scheme", ["iid", "dirichlet"])
def test_partitioning_is_deterministic_and_group_aware(scheme: str) -> None:
    groups, labels = _synthetic_groups()
    pool, test = holdout_test(groups, labels, 4, 0.2, seed=3)
    a = partition_sites(groups, labels, pool, 4, 5, scheme, 0.5, seed=3)
    b = partition_sites(groups, labels, pool, 4, 5, scheme, 0.5, seed=3)
    c = partition_sites(groups, labels, pool, 4, 5, scheme, 0.5, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    assert sorted(np.concatenate(a).tolist()) == sorted(pool.tolist())  # every pool image lands at one site
    _assert_disjoint_groups(groups, [test, *a])
    for k, share in enumerate(a):
        train, val = split_train_val(groups, labels, share, 4, 0.2, seed=3, site=k)
        _assert_disjoint_groups(groups, [train, val])
        assert len(train) > 0 and sorted(np.concatenate([train, val]).tolist()) == sorted(share.tolist())


def test_test_set_does_not_depend_on_the_number_of_sites() -> None:
    first = central_test_set(RunConfig.from_mapping(tiny_run_config()))
    again = central_test_set(RunConfig.from_mapping(tiny_run_config(**{"num-server-rounds": 9})))
    assert np.array_equal(first.images, again.images)


def test_smaller_alpha_means_more_label_skew() -> None:
    groups, labels = _synthetic_groups(400, seed=1)
    pool = np.arange(len(labels))
    iid = _label_skew(groups, labels, partition_sites(groups, labels, pool, 4, 8, "iid", 1.0, 0), 4)
    skews = {
        alpha: np.mean([
            _label_skew(groups, labels, partition_sites(groups, labels, pool, 4, 8, "dirichlet", alpha, s), 4)
            for s in range(5)
        ])
        for alpha in (0.1, 1.0, 100.0)
    }
    assert iid < 0.08
    assert skews[0.1] > skews[1.0] > skews[100.0]
    assert skews[0.1] > 0.4


def test_iid_sites_are_balanced_in_size() -> None:
    groups, labels = _synthetic_groups(400, seed=2)
    shares = partition_sites(groups, labels, np.arange(len(labels)), 4, 5, "iid", 1.0, 0)
    sizes = np.array([len(s) for s in shares])
    assert sizes.max() - sizes.min() <= 0.1 * sizes.mean()


def test_too_many_sites_for_the_groups_is_a_clear_error() -> None:
    groups, labels = _synthetic_groups(10)
    with pytest.raises(ValueError, match="cannot give 8 sites 2 groups each"):
        partition_sites(groups, labels, np.arange(len(labels)), 4, 8, "iid", 1.0, 0)


def test_simulated_sites_never_share_groups_with_each_other_or_the_test_set() -> None:
    config = RunConfig.from_mapping(tiny_run_config(partitioning="dirichlet"))
    sites = all_simulated_sites(config, 3)
    test = central_test_set(config)
    parts = [set(test.groups)] + [set(s.train.groups) | set(s.val.groups) for s in sites]
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            assert not a & b


def test_lc25000_split_keeps_near_duplicate_groups_together(lc25000: Path) -> None:
    """On the real data: 740 near-duplicate groups never straddle test / sites / validation."""
    group_of = read_groups_csv(lc25000 / "groups.csv")
    paths = np.array(sorted(group_of))
    groups = np.array([group_of[p] for p in paths])
    classes = sorted({p.split("/")[0] for p in paths})
    labels = np.array([classes.index(p.split("/")[0]) for p in paths])
    assert len(paths) == 15000 and len(set(groups)) == 740
    pool, test = holdout_test(groups, labels, 3, 0.2, seed=42)
    assert 0.15 < len(test) / len(paths) < 0.25
    sites = partition_sites(groups, labels, pool, 3, 10, "dirichlet", 0.5, seed=42)
    splits = [split_train_val(groups, labels, s, 3, 0.15, 42, k) for k, s in enumerate(sites)]
    _assert_disjoint_groups(groups, [test] + [part for pair in splits for part in pair])
    assert sum(len(t) + len(v) for t, v in splits) == len(pool)
