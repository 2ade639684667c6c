"""From a `dataset` setting to the images a site trains on and the server tests on.

Simulation: one dataset is split into a central test set (held out from all sites) and
`num_sites` site shares, each with its own validation split. Deployment: a site reads its
own `data-path`; the server reads its own test set. Loading is cached per process, so a
simulation actor that plays several hospitals decodes the data once.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config.run_config import RunConfig, resolve_path
from common.config.stain_settings import normalises, parse_reference
from common.data.checks import check_splittable
from common.data.folder import DEFAULT_MAX_IMAGE_PIXELS
from common.data.formats import FORMATS, LoadOptions, described, load_dataset
from common.data.imageset import DataError, ImageSet
from common.data.npz import load_pathmnist
from common.data.partition import (
    holdout_public,
    holdout_test,
    keyed_train_val,
    partition_sites,
    simulation_split_key,
)
from common.data.stain import apply_stain_shift
from common.data.stain_handling import normalise_images
from common.data.synthetic import make_synthetic

log = logging.getLogger("fedpath.data")


@dataclass(frozen=True)
class SiteData:
    """One site's private training and local validation images."""

    train: ImageSet
    val: ImageSet


@functools.lru_cache(maxsize=4)
def load_source(
    dataset: str, image_size: int, synthetic_images: int, seed: int, groups_csv: str = "", strict: bool = False,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> tuple[ImageSet, ImageSet | None]:
    """(pool, official test set or None) for a `dataset` setting."""
    if dataset == "synthetic":
        return make_synthetic(synthetic_images, image_size, seed), None
    if dataset == "pathmnist":
        return load_pathmnist(image_size)
    path = resolve_path(dataset)
    if not path.exists():
        raise DataError(
            f"dataset {dataset!r} is neither 'synthetic', 'pathmnist' nor an existing "
            f"{described(FORMATS).removeprefix('an ')} (looked for {path})"
        )
    groups = resolve_path(groups_csv) if groups_csv else None
    return load_dataset(path, LoadOptions(image_size, strict, max_pixels, groups))


def load_pool(config: RunConfig) -> tuple[ImageSet, ImageSet | None]:
    """(pool, official test set or None) exactly as the server and the simulated sites read them."""
    return load_source(
        config.dataset, config.image_size, config.synthetic_images, config.seed, config.groups_csv, config.strict,
        config.max_image_pixels,
    )



def _split(config: RunConfig) -> tuple[ImageSet, np.ndarray, ImageSet, np.ndarray]:
    """(all images, indices the sites share, central test set, indices of the public share)."""
    pool, official_test = load_pool(config)
    if official_test is not None:
        pool_idx, test = np.arange(len(pool)), official_test
    else:
        check_splittable(pool.labels, pool.groups, pool.classes, f"dataset {config.dataset}")
        pool_idx, test_idx = holdout_test(pool.groups, pool.labels, len(pool.classes), config.test_fraction,
                                          config.seed)
        test = pool.subset(test_idx)
    site_idx, public_idx = holdout_public(pool.groups, pool.labels, pool_idx, len(pool.classes),
                                          config.public_fraction, config.seed)
    return pool, site_idx, test, public_idx


def public_share(config: RunConfig) -> ImageSet:
    """Groups held out from every site and from the test set (`public-fraction`).

    They stand for public data the coordinating centre may hold, e.g. to pretrain the
    backbone non-privately (`python -m server.pretrain`): no hospital's data is in it.
    """
    pool, _, _, public_idx = _split(config)
    if len(public_idx) == 0:
        raise DataError("public-fraction is 0: there is no public share to use")
    return pool.subset(public_idx)


def public_share_as_trained(config: RunConfig) -> ImageSet:
    """The public share as the sites' images look in training: stain-normalised where the run normalises."""
    return _normalised(public_share(config), config)


def central_test_set(config: RunConfig) -> ImageSet:
    """The held-out test set every round's global model is evaluated on (stain-normalised as the sites' data)."""
    return _normalised(_split(config)[2], config)


def dataset_classes(config: RunConfig) -> list[str]:
    return list(load_pool(config)[0].classes)


def simulated_site(config: RunConfig, site: int, num_sites: int) -> SiteData:
    """Site `site` of `num_sites` in a simulation: its share, split into train and val."""
    if not 0 <= site < num_sites:
        raise DataError(f"partition-id {site} is outside 0..{num_sites - 1}")
    pool, pool_idx, _, _ = _split(config)
    shares = partition_sites(
        pool.groups, pool.labels, pool_idx, len(pool.classes), num_sites,
        config.partitioning, config.dirichlet_alpha, config.seed,
    )
    train_idx, val_idx = keyed_train_val(
        pool.groups, shares[site], config.val_fraction, simulation_split_key(config.seed, site)
    )
    return stain_handled(_with_stain(SiteData(pool.subset(train_idx), pool.subset(val_idx)), config, site), config)


def all_simulated_sites(config: RunConfig, num_sites: int) -> list[SiteData]:
    return [simulated_site(config, k, num_sites) for k in range(num_sites)]


def deployed_site(
    data_path: Path, image_size: int, val_fraction: float, split_key: bytes, strict: bool = False,
    classes: list[str] | None = None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, groups_csv: Path | None = None,
) -> SiteData:
    """A real site's data from its own `data-path` (ImageFolder tree or .npz).

    Every argument is the site's own (node config / state dir), never the coordinator's: the
    local validation split is keyed by `split_key` (`keyed_train_val`). An `.npz` carries no
    class names: its labels are checked against the federation's `classes` (label k is classes[k]).
    """
    return _deployed(str(data_path), image_size, val_fraction, split_key, strict,
                     tuple(classes) if classes else None, max_pixels, str(groups_csv) if groups_csv else "")


@functools.lru_cache(maxsize=2)
def _deployed(
    data_path: str, image_size: int, val_fraction: float, split_key: bytes, strict: bool,
    classes: tuple[str, ...] | None, max_pixels: int, groups_csv: str = "",
) -> SiteData:
    options = LoadOptions(image_size, strict, max_pixels, Path(groups_csv) if groups_csv else None, classes)
    pool, _ = load_dataset(Path(data_path), options)  # an official test split stays unused at a site
    train_idx, val_idx = keyed_train_val(pool.groups, np.arange(len(pool)), val_fraction, split_key)
    return SiteData(pool.subset(train_idx), pool.subset(val_idx))


def _with_stain(data: SiteData, config: RunConfig, site: int) -> SiteData:
    if config.stain_shift <= 0:
        return data
    shift = lambda s: ImageSet(  # noqa: E731
        apply_stain_shift(s.images, config.stain_shift, config.seed, site), s.labels, s.groups, s.classes, s.report,
        s.patient_groups,
    )
    return SiteData(shift(data.train), shift(data.val))


def stain_handled(data: SiteData, config: RunConfig) -> SiteData:
    """A site's data as it trains under `stain`: normalised to the run's reference where asked (cached)."""
    if not normalises(config.stain):
        return data
    return SiteData(_normalised(data.train, config), _normalised(data.val, config))


def _normalised(images: ImageSet, config: RunConfig) -> ImageSet:
    if not normalises(config.stain):
        return images
    out, fallbacks = normalise_images(images.images, parse_reference(config.stain_reference))
    if fallbacks:
        log.info("stain normalisation kept %d of %d images as they were (background or no stain estimate)",
                 fallbacks, len(images))
    report = dataclasses.replace(images.report, stain_fallbacks=fallbacks)
    return ImageSet(out, images.labels, images.groups, images.classes, report, images.patient_groups)


def check_classes(site_classes: list[str], federation_classes: list[str], where: str) -> None:
    """Stop before training when a site's classes are not the federation's."""
    if list(site_classes) == list(federation_classes):
        return
    unexpected = sorted(set(site_classes) - set(federation_classes))
    missing = sorted(set(federation_classes) - set(site_classes))
    detail = []
    if unexpected:
        detail.append(f"unexpected classes {unexpected}")
    if missing:
        detail.append(f"missing classes {missing} (an empty folder declares a class the site has no images of)")
    if not detail:
        detail.append(f"same classes in another order {site_classes}")
    raise DataError(
        f"{where} does not match the federation's class list {federation_classes}: " + "; ".join(detail)
    )
