"""Group-aware splits: central test hold-out, sites, and each site's local validation.

A group is a patient, slide or near-duplicate family (LC25000's `groups.csv`). Every split
here moves whole groups, so no group straddles test / site / validation or two sites:
otherwise near-identical patches on both sides of a split inflate accuracy into meaning-
lessness. The cross-site splits take their randomness from `seed`, so the server and every
simulated site derive the same split independently (the experimenter chooses who the
hospitals are). A site's own train/validation split does not: it is `keyed_train_val`,
where a group's side depends only on its id and a key the site holds.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

import numpy as np

from common.data.imageset import DataError

_TEST, _SITES, _VAL, _PUBLIC, _SERVER_VALIDATION = 1, 2, 3, 5, 7  # independent random streams per purpose


@dataclass(frozen=True)
class GroupTable:
    """Per-group view of a dataset: members, size and majority label."""

    members: list[np.ndarray]
    sizes: np.ndarray
    labels: np.ndarray

    @classmethod
    def build(cls, groups: np.ndarray, labels: np.ndarray, indices: np.ndarray, num_classes: int) -> GroupTable:
        indices = np.asarray(indices, dtype=np.int64)
        _, inverse = np.unique(groups[indices], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        members = [indices[chunk] for chunk in np.split(order, bounds)] if len(indices) else []
        sizes = np.array([len(m) for m in members], dtype=np.int64)
        majority = np.array(
            [np.bincount(labels[m], minlength=num_classes).argmax() for m in members], dtype=np.int64
        )
        return cls(members, sizes, majority)

    def gather(self, group_ids: list[int] | np.ndarray) -> np.ndarray:
        if len(group_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate([self.members[g] for g in group_ids]))


def _stratified_take(table: GroupTable, fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Split groups so about `fraction` of each class's images land in the first part."""
    taken: list[int] = []
    kept: list[int] = []
    for label in np.unique(table.labels):
        ids = rng.permutation(np.flatnonzero(table.labels == label))
        target = fraction * table.sizes[ids].sum()
        running = 0
        for g in ids:
            if running < target and (running + table.sizes[g] / 2) <= target + 1e-9:
                taken.append(int(g))
                running += table.sizes[g]
            else:
                kept.append(int(g))
    return taken, kept


def holdout_test(
    groups: np.ndarray, labels: np.ndarray, num_classes: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices; the test groups are the same whatever the number of sites."""
    table = GroupTable.build(groups, labels, np.arange(len(labels)), num_classes)
    if len(table.members) < 2:
        raise DataError("need at least 2 groups to hold out a central test set")
    test_ids, pool_ids = _stratified_take(table, fraction, np.random.default_rng([seed, _TEST]))
    if not test_ids or not pool_ids:
        raise DataError(f"test-fraction={fraction} leaves an empty test set or pool with {len(table.members)} groups")
    return table.gather(pool_ids), table.gather(test_ids)


def holdout_public(
    groups: np.ndarray, labels: np.ndarray, indices: np.ndarray, num_classes: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(site pool, public share): groups no hospital holds, e.g. for source-domain pretraining."""
    indices = np.asarray(indices, dtype=np.int64)
    if fraction <= 0:
        return indices, np.zeros(0, dtype=np.int64)
    table = GroupTable.build(groups, labels, indices, num_classes)
    public_ids, pool_ids = _stratified_take(table, fraction, np.random.default_rng([seed, _PUBLIC]))
    if not pool_ids:
        raise DataError(f"public-fraction={fraction} leaves no data for the sites")
    return table.gather(pool_ids), table.gather(public_ids)


def holdout_server_validation(
    groups: np.ndarray, labels: np.ndarray, indices: np.ndarray, num_classes: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(test, server validation): whole groups of the server's held-out `indices`, about `fraction` to validation.

    The server's validation part for round acceptance: group-disjoint from the
    test set that remains, and from every site (the held-out indices are in no site's share).
    """
    indices = np.asarray(indices, dtype=np.int64)
    table = GroupTable.build(groups, labels, indices, num_classes)
    rng = np.random.default_rng([seed, _SERVER_VALIDATION])
    validation_ids, test_ids = _stratified_take(table, fraction, rng)
    if (not validation_ids or not test_ids) and len(table.members) >= 2:
        # too few groups per class to stratify (small data): whole groups in a seeded order, at least one each side
        order = [int(g) for g in rng.permutation(len(table.members))]
        cumulative = np.cumsum(table.sizes[order])
        take = int(np.clip(np.searchsorted(cumulative, fraction * cumulative[-1]) + 1, 1, len(order) - 1))
        validation_ids, test_ids = order[:take], order[take:]
    if not validation_ids or not test_ids:
        raise DataError(
            f"round-acceptance=validation needs a server validation part: {fraction:g} of the {len(table.members)} "
            "held-out groups leaves an empty test set or validation part; raise test-fraction or set "
            "round-acceptance='all'"
        )
    return table.gather(test_ids), table.gather(validation_ids)


def partition_sites(
    groups: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    num_classes: int,
    num_sites: int,
    scheme: str,
    alpha: float,
    seed: int,
    min_groups_per_site: int = 2,
    max_tries: int = 200,
) -> list[np.ndarray]:
    """Assign whole groups of `indices` to `num_sites` sites, IID or Dirichlet label skew."""
    if num_sites < 1:
        raise DataError(f"need at least one site, got {num_sites}")
    table = GroupTable.build(groups, labels, indices, num_classes)
    if len(table.members) < num_sites * min_groups_per_site:
        raise DataError(
            f"{len(table.members)} groups cannot give {num_sites} sites {min_groups_per_site} groups each; "
            "use fewer sites or more data"
        )
    rng = np.random.default_rng([seed, _SITES])
    if scheme == "iid":
        assignment = _assign_iid(table, num_sites, rng)
    elif scheme == "dirichlet":
        for _ in range(max_tries):
            assignment = _assign_dirichlet(table, num_sites, alpha, rng)
            if min(len(a) for a in assignment) >= min_groups_per_site:
                break
        else:
            raise DataError(
                f"Dirichlet(alpha={alpha}) left a site with fewer than {min_groups_per_site} groups in "
                f"{max_tries} draws; use a larger dirichlet-alpha or fewer sites"
            )
    else:
        raise DataError(f"unknown partitioning {scheme!r}; valid values: iid, dirichlet")
    return [table.gather(ids) for ids in assignment]


def _assign_iid(table: GroupTable, num_sites: int, rng: np.random.Generator) -> list[list[int]]:
    """Per class, give each group to the site that has the fewest images of that class."""
    assignment: list[list[int]] = [[] for _ in range(num_sites)]
    totals = np.zeros(num_sites)
    for label in np.unique(table.labels):
        per_class = np.zeros(num_sites)
        ids = rng.permutation(np.flatnonzero(table.labels == label))
        for g in ids[np.argsort(-table.sizes[ids], kind="stable")]:  # big groups first balance best
            site = int(np.lexsort((np.arange(num_sites), totals, per_class))[0])
            assignment[site].append(int(g))
            per_class[site] += table.sizes[g]
            totals[site] += table.sizes[g]
    return assignment


def _assign_dirichlet(table: GroupTable, num_sites: int, alpha: float, rng: np.random.Generator) -> list[list[int]]:
    """Per class, split its groups among sites in Dirichlet(alpha) proportions."""
    assignment: list[list[int]] = [[] for _ in range(num_sites)]
    for label in np.unique(table.labels):
        ids = rng.permutation(np.flatnonzero(table.labels == label))
        shares = rng.dirichlet(np.full(num_sites, alpha))
        cuts = np.cumsum(shares) * table.sizes[ids].sum()
        midpoints = np.cumsum(table.sizes[ids]) - table.sizes[ids] / 2
        for g, mid in zip(ids, midpoints):
            assignment[int(min(np.searchsorted(cuts, mid), num_sites - 1))].append(int(g))
    return assignment


def in_validation(group_id: str, key: bytes, fraction: float) -> bool:
    """Whether a group (patient) belongs to the site's local validation split.

    HMAC-SHA256 of the group id under the site's secret key, read as a number in [0, 1):
    the side of a group depends on nothing else, so adding or removing records (of this or
    any other patient) never moves another patient between training and validation, and a
    coordinator that does not hold the key can neither predict nor choose the split.
    """
    digest = hmac.new(key, str(group_id).encode("utf-8"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def keyed_train_val(
    groups: np.ndarray, indices: np.ndarray, fraction: float, key: bytes
) -> tuple[np.ndarray, np.ndarray]:
    """A site's (train, val) indices: whole groups, each placed by `in_validation` alone."""
    if not key:
        raise ValueError("a site's train/validation split needs the site's key")
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if fraction <= 0 or len(indices) == 0:
        return indices, np.zeros(0, dtype=np.int64)
    side = {g: in_validation(g, key, fraction) for g in np.unique(groups[indices])}
    val_mask = np.fromiter((side[g] for g in groups[indices]), dtype=bool, count=len(indices))
    return indices[~val_mask], indices[val_mask]


def simulation_split_key(seed: int, site: int) -> bytes:
    """A simulated site's split key. The experimenter plays every hospital in a simulation, so
    its key derives from the seed (reproducible experiments); deployed sites hold their own."""
    return hashlib.sha256(f"fedpath-simulated-site-split:{seed}:{site}".encode()).digest()


def split_train_val(
    groups: np.ndarray, labels: np.ndarray, indices: np.ndarray, num_classes: int, fraction: float, seed: int, site: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of data the coordinator holds itself (e.g. the public share for pretraining).

    Stratified by label and seeded: fine for the centre's own data, never for a site's (see
    `keyed_train_val`), since the side of one group here depends on every other group.
    """
    table = GroupTable.build(groups, labels, indices, num_classes)
    if fraction <= 0 or len(table.members) < 2:
        return np.sort(np.asarray(indices, dtype=np.int64)), np.zeros(0, dtype=np.int64)
    val_ids, train_ids = _stratified_take(table, fraction, np.random.default_rng([seed, _VAL, site]))
    if not train_ids:  # never leave a site with nothing to train on
        train_ids, val_ids = val_ids[:1], val_ids[1:]
    return table.gather(train_ids), table.gather(val_ids)
