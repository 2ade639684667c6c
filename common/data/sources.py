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

from common.config.choices import SERVER_VALIDATION_FRACTION
from common.config.run_config import RunConfig, resolve_path
from common.config.stain_settings import normalises, parse_reference
from common.data.checks import check_splittable
from common.data.content import copies_of
from common.data.folder import DEFAULT_MAX_IMAGE_PIXELS
from common.data.formats import FORMATS, LoadOptions, described, load_dataset
from common.data.imageset import DataError, ImageSet
from common.data.npz import load_pathmnist
from common.data.partition import (
    holdout_public,
    holdout_server_validation,
    holdout_test,
    keyed_train_val,
    partition_sites,
    simulation_split_key,
)
from common.data.stain import apply_stain_shift
from common.data.stain_handling import normalise_images
from common.data.synthetic import make_synthetic
from common.data.tree_checks import class_key

log = logging.getLogger("fedpath.data")


@dataclass(frozen=True)
class SiteData:
    """One site's private training and local validation images."""

    train: ImageSet
    val: ImageSet
    # Deployed: training images byte-identical to a central test image (`test-hashes`), counted in n but
    # never trained on (`ImageSet.withheld`), and dropped from validation. A count for the site's own log.
    test_copies: int = 0


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



@dataclass(frozen=True)
class _Split:
    """How a simulation cuts its dataset: the sites' share, the central test set and the public share."""

    pool: ImageSet  # every image of the dataset (but an official test set)
    site_idx: np.ndarray  # pool indices the sites share
    test: ImageSet
    public_idx: np.ndarray  # pool indices held out for the centre's public use
    test_copies: int  # pool images byte-identical to a test image: in no site's share, nor the public one
    # round-acceptance = validation: groups of the held-out part kept out of `test`, to judge rounds on
    server_validation: ImageSet | None = None


def _split(config: RunConfig) -> _Split:
    """The one cut of `dataset` that the server and every simulated site derive alike."""
    pool, official_test = load_pool(config)
    if official_test is not None:
        pool_idx, test = np.arange(len(pool)), official_test
    else:
        check_splittable(pool.labels, pool.groups, pool.classes, f"dataset {config.dataset}")
        pool_idx, test_idx = holdout_test(pool.groups, pool.labels, len(pool.classes), config.test_fraction,
                                          config.seed)
        test = pool.subset(test_idx)
    copies = copies_of(pool.content_ids()[pool_idx], test.content_ids())
    if copies.any():
        log.info("%d images of %s are byte-identical copies of central test images: no site trains on them",
                 int(copies.sum()), config.dataset)
    site_idx, public_idx = holdout_public(pool.groups, pool.labels, pool_idx[~copies], len(pool.classes),
                                          config.public_fraction, config.seed)
    return _Split(pool, site_idx, test, public_idx, int(copies.sum()))


def _server_cut(config: RunConfig) -> _Split:
    """The cut as the server sees it.

    The held-out data (central test split or official test set) is divided by whole groups, whatever
    `round-acceptance` says (so `validation` and `all` are tested on the same images, and `all` still reports each
    round's validation accuracy), and with or without a public share (the public share is what a centre pretrains
    its backbone on, and a model judged on its own training data would keep round 0 forever):
    `SERVER_VALIDATION_FRACTION` to the server's validation part, the rest stays the test set. The held-out part is
    in no site's share, and a site image with a held-out image's bytes is withheld from every site (`_split`), so
    the validation part is group-disjoint from the test set and from every site. The sites never need this cut.
    """
    cut = _split(config)
    test_idx, validation_idx = holdout_server_validation(cut.test.groups, cut.test.labels, np.arange(len(cut.test)),
                                                         len(cut.test.classes), SERVER_VALIDATION_FRACTION, config.seed)
    return dataclasses.replace(cut, test=cut.test.subset(test_idx), server_validation=cut.test.subset(validation_idx))


def copies_of_test_images(config: RunConfig) -> int:
    """How many images of `dataset` no simulated site trains on because a central test image has the same bytes."""
    return _split(config).test_copies


def classes_without_training_images(config: RunConfig) -> list[str]:
    """Classes of the central test set of which the sites' share of `dataset` holds no image.

    In a simulation no site can learn them, so their test images are all misclassified, whatever the model.
    """
    cut = _server_cut(config)
    share = np.bincount(cut.pool.labels[cut.site_idx], minlength=len(cut.pool.classes))
    return [name for name, tested, held in zip(cut.pool.classes, cut.test.class_counts(), share) if tested and not held]


def public_share(config: RunConfig) -> ImageSet:
    """Groups held out from every site and from the test set (`public-fraction`).

    They stand for public data the coordinating centre may hold, e.g. to pretrain the
    backbone non-privately (`python -m server.pretrain`): no hospital's data is in it.
    """
    cut = _split(config)
    if len(cut.public_idx) == 0:
        raise DataError("public-fraction is 0: there is no public share to use")
    return cut.pool.subset(cut.public_idx)


def public_share_as_trained(config: RunConfig) -> ImageSet:
    """The public share as the sites' images look in training: stain-normalised where the run normalises."""
    return _normalised(public_share(config), config)


def server_validation_set(config: RunConfig) -> tuple[ImageSet | None, str]:
    """(the data the server judges rounds on, what it is), as the sites' images look in training.

    Never the central test set, and never the public share: `SERVER_VALIDATION_FRACTION` of the groups held out
    for testing, which the test set then no longer holds (under round-acceptance = all too, where it is only
    reported). Not the public share because that is what a centre pretrains its
    backbone on (`server.pretrain --public-share`, the experiments' backbone): the starting model would be judged
    on its own training data, look best at round 0, and every round would be dropped.
    """
    cut = _server_cut(config)
    if cut.server_validation is not None:
        return _normalised(cut.server_validation, config), "server validation part of the held-out groups"
    return None, ""


def central_test_set(config: RunConfig) -> ImageSet:
    """The held-out test set every round's global model is evaluated on (stain-normalised as the sites' data)."""
    return _normalised(_server_cut(config).test, config)


def dataset_classes(config: RunConfig) -> list[str]:
    return list(load_pool(config)[0].classes)


def simulated_site(config: RunConfig, site: int, num_sites: int) -> SiteData:
    """Site `site` of `num_sites` in a simulation: its share, split into train and val."""
    if not 0 <= site < num_sites:
        raise DataError(f"partition-id {site} is outside 0..{num_sites - 1}")
    cut = _split(config)
    pool = cut.pool
    shares = partition_sites(
        pool.groups, pool.labels, cut.site_idx, len(pool.classes), num_sites,
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
    test_hashes: frozenset[str] = frozenset(),
) -> SiteData:
    """A real site's data from its own `data-path` (ImageFolder tree or .npz).

    Every argument is the site's own (node config / state dir), never the coordinator's: the
    local validation split is keyed by `split_key` (`keyed_train_val`). An `.npz` carries no
    class names: its labels are checked against the federation's `classes` (label k is classes[k]).
    `test_hashes` are the central test set's SHA-256s (`test-hashes`): a training image with one of
    them is withheld (`withheld_copies`), a validation image with one is dropped.
    """
    return _deployed(str(data_path), image_size, val_fraction, split_key, strict,
                     tuple(classes) if classes else None, max_pixels, str(groups_csv) if groups_csv else "",
                     test_hashes)


@functools.lru_cache(maxsize=2)
def _deployed(
    data_path: str, image_size: int, val_fraction: float, split_key: bytes, strict: bool,
    classes: tuple[str, ...] | None, max_pixels: int, groups_csv: str = "", test_hashes: frozenset[str] = frozenset(),
) -> SiteData:
    options = LoadOptions(image_size, strict, max_pixels, Path(groups_csv) if groups_csv else None, classes)
    pool, _ = load_dataset(Path(data_path), options)  # an official test split stays unused at a site
    train_idx, val_idx = keyed_train_val(pool.groups, np.arange(len(pool)), val_fraction, split_key)
    return withheld_copies(SiteData(pool.subset(train_idx), pool.subset(val_idx)), test_hashes, data_path)


def withheld_copies(data: SiteData, test_hashes: frozenset[str], where: str) -> SiteData:
    """A deployed site's data with copies of central test images withheld from training.

    The hashes come from the coordinator, who may craft them to probe for one image it knows. So a
    withheld training image still counts everywhere a count is sent or planned with (n, patients,
    the sampling rate, the steps): it is only left out of each Poisson batch after sampling, a rule
    per record that never looks at another (docs/PRIVACY.md, "Test images at the sites"). The
    number withheld stays in the site's own log.
    """
    if not test_hashes:
        return data
    in_train = copies_of(data.train.content_ids(), test_hashes)
    in_val = copies_of(data.val.content_ids(), test_hashes)
    if in_train.any() or in_val.any():
        log.warning("%s: %d training and %d validation images are byte-identical copies of central test images "
                    "(test-hashes): never trained on, not validated on", where, int(in_train.sum()), int(in_val.sum()))
    train = dataclasses.replace(data.train, withheld=in_train)
    return SiteData(train, data.val.subset(np.flatnonzero(~in_val)), int(in_train.sum() + in_val.sum()))


def _with_stain(data: SiteData, config: RunConfig, site: int) -> SiteData:
    if config.stain_shift <= 0:
        return data
    shift = lambda s: dataclasses.replace(  # noqa: E731
        s, images=apply_stain_shift(s.images, config.stain_shift, config.seed, site))
    return SiteData(shift(data.train), shift(data.val), data.test_copies)


def stain_handled(data: SiteData, config: RunConfig) -> SiteData:
    """A site's data as it trains under `stain`: normalised to the run's reference where asked (cached)."""
    if not normalises(config.stain):
        return data
    return SiteData(_normalised(data.train, config), _normalised(data.val, config), data.test_copies)


def _normalised(images: ImageSet, config: RunConfig) -> ImageSet:
    if not normalises(config.stain):
        return images
    out, fallbacks = normalise_images(images.images, parse_reference(config.stain_reference))
    if fallbacks:
        log.info("stain normalisation kept %d of %d images as they were (background or no stain estimate)",
                 fallbacks, len(images))
    report = dataclasses.replace(images.report, stain_fallbacks=fallbacks)
    return dataclasses.replace(images, images=out, report=report)


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
    alike = [f"{u!r} is {m!r}" for u in unexpected for m in missing if class_key(u) == class_key(m)]
    if alike:
        detail.append(f"names that differ only in case, surrounding spaces or Unicode form ({', '.join(alike)}): "
                      "rename the folder to the federation's name exactly")
    if not detail:
        detail.append(f"same classes in another order {site_classes}")
    raise DataError(
        f"{where} does not match the federation's class list {federation_classes}: " + "; ".join(detail)
    )
