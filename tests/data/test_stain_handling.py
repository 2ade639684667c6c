"""Stain handling at the site (issue 13): torchstain Macenko normalisation and stain augmentation on real patches."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torchstain.torch.augmentors import TorchMacenkoAugmentor
from torchstain.torch.normalizers import TorchMacenkoNormalizer

from client.identity import site_identity
from client.round_types import RoundRequest
from client.site import SITE_LOG, load_site_data, run_round
from common.config.run_config import ConfigError, RunConfig
from common.data import stain_handling as stain
from common.data.folder import load_image_folder
from common.model.factory import initial_model
from common.model.network import frozen_fingerprint, get_trainable_state
from common.privacy.randomness import public_randomness
from common.training.local import train_local
from common.training.settings import TrainSettings
from tests.helpers.site_inputs import new_site

CLASSES = ("lung_aca", "lung_n", "lung_scc")


def _real_tree(lc25000: Path, root: Path, per_class: int) -> Path:
    """A small ImageFolder of real LC25000 patches (copied into a temp dir, never the repo)."""
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for source in sorted((lc25000 / name).iterdir())[:per_class]:
            shutil.copy(source, root / name / source.name)
    return root


@pytest.fixture
def real_patches(lc25000: Path, tmp_path: Path) -> np.ndarray:
    """24 real H&E patches at 32 px, 8 per class, plus one blank (background) patch at the end."""
    images = load_image_folder(_real_tree(lc25000, tmp_path / "real", 8), 32, use_cache=False).images
    return np.concatenate([images, np.full((1, 32, 32, 3), 245, dtype=np.uint8)])


def _stained_pixels(images: np.ndarray) -> np.ndarray:
    """Per uint8 (N, H, W, 3) image, its pixels with stain by the rule common/data/stain_handling.py documents
    (optical density -log((I + 1) / IO) >= BETA in every channel), counted here independently, in integers:
    the rule is I <= IO·e^-BETA - 1 = 205.57 per channel, far from a grey level, so no rounding can move a pixel."""
    limit = stain.IO * math.exp(-stain.BETA) - 1
    assert 0.05 < limit % 1 < 0.95
    return (images <= math.floor(limit)).all(axis=-1).sum(axis=(1, 2))


def _background_and_tissue(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(background, tissue) masks: fewer than MIN_STAINED_PIXELS stained pixels, which the code must leave as
    they are, and at least twice that many, which it must handle. Between the two, Macenko's fit on a few
    pixels may succeed here and fail in another floating-point build, so the tests accept either."""
    counts = _stained_pixels(images)
    return counts < stain.MIN_STAINED_PIXELS, counts >= 2 * stain.MIN_STAINED_PIXELS


def _od(images: np.ndarray) -> np.ndarray:
    """Optical densities (N, H·W, 3), float64, as torchstain computes them."""
    return -np.log((images.reshape(len(images), -1, 3).astype(np.float64) + 1) / stain.IO)


def test_normalised_real_patches_take_the_reference_stain_and_background_falls_back(real_patches: np.ndarray) -> None:
    """What Macenko normalisation makes, checked against the definition rather than a measured number.

    torchstain recomposes each image as IO·exp(-HE_ref·C) with its concentrations C rescaled so that their 99th
    percentiles are the reference's, then truncates to uint8. So (1) every unsaturated pixel's optical density
    lies in the span of the reference's two stain vectors, up to the truncation (less than two grey levels per
    channel, float32 rounding included: at most log(1 + 2/I) in optical density at grey level I); and (2) the
    concentrations read back in the reference's basis have the reference's 99th percentiles, up to that error.
    """
    # a reference unlike torchstain's default (its eosin and haematoxylin vectors moved), so the pull is visible
    reference = stain.parse_reference("0.65,0.07,0.70,0.99,0.29,0.11,1.5,1.2")
    out, fallbacks = stain.normalise_images(real_patches, reference)
    assert out.shape == real_patches.shape and out.dtype == np.uint8
    background, tissue = _background_and_tissue(real_patches)
    kept = (out == real_patches).all(axis=(1, 2, 3))
    assert fallbacks == kept.sum()  # the count is of the images kept as they were
    assert background[-1] and kept[background].all()  # the blank patch and every pale one are kept
    assert not kept[tissue].any() and tissue.sum() > len(real_patches) // 2  # the tissue is normalised
    he = np.asarray(reference.he, dtype=np.float64).reshape(3, 2)
    to_concentrations = np.linalg.pinv(he)
    off_span = np.eye(3) - he @ to_concentrations  # projects an optical density off the reference's span

    def residual_over_bound(images: np.ndarray) -> list[np.ndarray]:
        ratios = []
        for image, od in zip(images, _od(images)):
            grey = image.reshape(-1, 3).astype(np.float64)
            unsaturated = ((grey >= 1) & (grey <= 254)).all(axis=1)  # 0 and 255 bound nothing
            bound = np.sqrt((np.log1p(2 / grey[unsaturated]) ** 2).sum(axis=1)) + 1e-6
            ratios.append(np.linalg.norm(od[unsaturated] @ off_span.T, axis=1) / bound)
        return ratios

    assert all(r.max() <= 1 for r in residual_over_bound(out[tissue]))
    # the originals are other stains: most of their pixels lie off the reference's span (the check has teeth)
    assert np.median([(r > 1).mean() for r in residual_over_bound(real_patches[tissue])]) > 0.5
    concentrations = _od(out[tissue]) @ to_concentrations.T  # (images, pixels, 2)
    # torchstain's percentile: the nearest rank, not interpolated
    top = np.sort(concentrations, axis=1)[:, round(0.99 * (concentrations.shape[1] - 1))]
    # two grey levels at grey level 50 (the dark pixels of these concentrations are lighter), through the
    # pseudo-inverse; the median over patches ignores the few whose clamping at 255 lowers the eosin percentile
    tolerance = np.abs(to_concentrations).sum(axis=1) * np.log1p(2 / 50)
    assert np.abs(np.median(top, axis=0) - reference.max_c).max() <= tolerance.min()


def test_normalisation_is_cached_by_content(real_patches: np.ndarray) -> None:
    reference = stain.default_reference()
    first, _ = stain.normalise_images(real_patches[:6], reference)
    done = stain.NORMALISED.computed_images
    again, _ = stain.normalise_images(real_patches[:6].copy(), reference)  # same content, another array
    assert stain.NORMALISED.computed_images == done and np.array_equal(first, again)
    stain.normalise_images(real_patches[:6], stain.parse_reference("0.6,0.2,0.7,0.8,0.4,0.6,1.9,1.0"))
    assert stain.NORMALISED.computed_images == done + 6  # another reference is another entry


def test_site_data_is_normalised_once_and_rounds_reuse_it(lc25000: Path, tmp_path: Path) -> None:
    node = {"data-path": str(_real_tree(lc25000, tmp_path / "site", 6)), "site-id": "h", "state-dir": str(tmp_path),
            "epsilon-budget": 8.0, "delta": 1e-3}
    config = RunConfig.from_mapping({"image-size": 32, "stain": "normalize"})
    identity = site_identity(node, config, 1)
    first = load_site_data(identity, config)
    done = stain.NORMALISED.computed_images
    second = load_site_data(identity, config)  # what the next round does
    assert stain.NORMALISED.computed_images == done
    assert np.array_equal(first.train.images, second.train.images)
    plain = load_site_data(identity, RunConfig.from_mapping({"image-size": 32}))
    assert not np.array_equal(plain.train.images, first.train.images)


def test_batched_augmentation_is_torchstains_augment(real_patches: np.ndarray) -> None:
    bases, usable = stain.stain_bases(real_patches)
    background, tissue = _background_and_tissue(real_patches)
    assert not usable[background].any() and usable[tissue].all()
    images = torch.from_numpy(real_patches).permute(0, 3, 1, 2).contiguous()
    library = TorchMacenkoAugmentor(sigma1=stain.SIGMA_SCALE, sigma2=stain.SIGMA_SHIFT)
    for i in np.flatnonzero(usable)[::4].tolist():
        library.fit(images[i], Io=stain.IO, beta=stain.BETA)
        torch.manual_seed(i)  # the library draws its factors from the global generator, in this order
        scale = library.random_uniform((2, 1), 1 - stain.SIGMA_SCALE, 1 + stain.SIGMA_SCALE).T
        shift = library.random_uniform((2, 1), -stain.SIGMA_SHIFT, stain.SIGMA_SHIFT).T
        torch.manual_seed(i)
        expected = library.augment(Io=stain.IO, beta=stain.BETA).permute(2, 0, 1)
        ours = stain.recompose(images[i:i + 1], torch.from_numpy(bases[i:i + 1]), scale, shift)[0]
        assert (ours.int() - expected).abs().max() <= 1


def test_augmentation_is_random_per_call_keeps_shape_and_range(real_patches: np.ndarray) -> None:
    images = torch.from_numpy(real_patches).permute(0, 3, 1, 2).contiguous()
    rows = torch.arange(len(images))
    augment = stain.StainAugmenter(real_patches, public_randomness("1").stream("stain-augmentation"))
    a, b = augment(images, rows), augment(images, rows)
    assert a.shape == b.shape == images.shape and a.dtype == torch.uint8
    assert not torch.equal(a, b) and not torch.equal(a, images)  # new draws every call
    assert torch.equal(a[-1], images[-1])  # no stain estimate: left as it is
    # per sample: one image's result does not depend on which others share its batch
    alone = stain.StainAugmenter(real_patches, public_randomness("1").stream("stain-augmentation"))
    assert torch.equal(alone(images[:1], rows[:1])[0], stain.StainAugmenter(
        real_patches, public_randomness("1").stream("stain-augmentation"))(images, rows)[0])
    unusable = stain.StainAugmenter(real_patches, public_randomness().stream("stain-augmentation")).unusable
    background, tissue = _background_and_tissue(real_patches)
    assert background.sum() <= unusable == (~stain.stain_bases(real_patches)[1]).sum() <= (~tissue).sum()


def test_patient_level_dp_training_with_stain_augmentation(real_patches: np.ndarray) -> None:
    """The patient path (the patch path trains in the site round below); stain matrices are fitted once."""
    from common.data.imageset import ImageSet
    from common.model.network import apply_policy, build_resnet

    data = ImageSet(real_patches[:-1], np.repeat(np.arange(3), 8), np.arange(24) // 2, list(CLASSES))
    done = stain.BASES.computed_images
    model = apply_policy(build_resnet("resnet18", 3, None, 0), "norm-head")
    settings = TrainSettings(epochs=1, batch_size=8, lr=0.05, momentum=0.9, randomness=public_randomness("5"), dp=True,
                             noise_multiplier=1.0, privacy_unit="patient", stain_augment=True)
    outcome = train_local(model, data, settings)
    assert outcome.steps >= 1 and np.isfinite(outcome.mean_loss) and outcome.history
    assert outcome.privacy_unit == "patient"
    stain.StainAugmenter(data.images, public_randomness().stream("stain-augmentation"))  # the next round's augmenter: from the cache
    assert stain.BASES.computed_images == done + 24


@pytest.mark.slow  # a site round with Macenko fits
def test_site_round_trains_under_dp_with_normalize_and_augment(lc25000: Path, tmp_path: Path) -> None:
    node = {"data-path": str(_real_tree(lc25000, tmp_path / "site", 8)), "site-id": "h", "epsilon-budget": 8.0,
            "delta": 1e-3, "state-dir": str(tmp_path / "state"), **new_site()}
    config = RunConfig.from_mapping({"image-size": 32, "batch-size": 8, "num-server-rounds": 1, "min-site-examples": 5,
                                     "stain": "normalize+augment"})
    model, _ = initial_model(config, 3)
    request = RoundRequest(1, 1, get_trainable_state(model), list(CLASSES), frozen_fingerprint(model))
    result = run_round(site_identity(node, config, 1), config, request)
    assert result.status == "trained" and result.metrics["epsilon"] > 0 and result.metrics["steps"] >= 1
    record = json.loads((tmp_path / "state" / SITE_LOG).read_text().splitlines()[-1])
    # counted at the site, in its own log: its training images without enough stain, and perhaps a few more
    unhandled = RunConfig.from_mapping({"image-size": 32})
    plain = load_site_data(site_identity(node, unhandled, 1), unhandled).train.images
    background, tissue = _background_and_tissue(plain)
    assert background.sum() <= record["stain_fallbacks"] <= (~tissue).sum()


@pytest.mark.parametrize("values, message", [
    ({"stain": "macenko"}, "stain 'macenko' is unknown; valid values: none, normalize, augment"),
    ({"stain-reference": "0.5,0.2,0.7"}, "needs 8 numbers"),
    ({"stain-reference": "0.5,0.2,0.7,0.8,0.4,inf,1.9,1.0"}, "must be finite"),
    ({"stain-reference": "0.5,0.2,0.7,0.8,0.4,0.5,1.9,0"}, "max concentrations must be > 0"),
    ({"stain-reference": "0.5,-0.2,0.7,0.8,0.4,0.5,1.9,1"}, "entries must be >= 0"),
    ({"stain-reference": "a,b"}, "8 comma-separated numbers"),
])
def test_stain_config_is_validated(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)
    assert RunConfig.from_mapping({"stain": "normalize+augment"}).stain == "normalize+augment"
    assert stain.parse_reference("") == stain.default_reference()


def test_the_default_reference_is_torchstains() -> None:
    library = TorchMacenkoNormalizer()  # common.config.stain_settings keeps its numbers torch-free
    assert stain.default_reference().he == pytest.approx(library.HERef.reshape(-1).tolist())
    assert stain.default_reference().max_c == pytest.approx(library.maxCRef.tolist())
    augmentor = TorchMacenkoAugmentor()
    assert (augmentor.sigma1, augmentor.sigma2) == (stain.SIGMA_SCALE, stain.SIGMA_SHIFT)


def test_the_report_states_the_stain_setting(tmp_path: Path) -> None:
    """run.json -> report.json -> the summary's line (the page itself: tests/report/test_report_html.py)."""
    from server.report.compose import compose_report
    from tests.helpers.report_support import build_run_dir

    run_dir = build_run_dir(tmp_path, rounds=1, sites=1)
    assert stain.describe_stain(compose_report(run_dir)["run"]["config"]).startswith("none")
    info = json.loads((run_dir / "run.json").read_text())
    info["config"].update({"stain": "normalize+augment", "stain-reference": ""})
    (run_dir / "run.json").write_text(json.dumps({**info, "test_stain_fallbacks": 3}))
    run = compose_report(run_dir)["run"]
    assert run["test_stain_fallbacks"] == 3
    text = stain.describe_stain(run["config"], run["test_stain_fallbacks"])
    assert text.startswith("normalize+augment: Macenko normalisation (torchstain) to reference torchstain's default")
    assert "3 test images" in text and "augmentation per sample and step" in text


def test_a_reference_fitted_on_public_patches_is_a_valid_run_config_value(
        lc25000: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from server.stain_reference import main

    assert main(["--data", str(_real_tree(lc25000, tmp_path / "public", 8)), "--image-size", "32"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("stain-reference='")
    value = printed.split("=", 1)[1].strip("'")
    config = RunConfig.from_mapping({"stain": "normalize", "stain-reference": value})  # passes validation
    fitted = stain.parse_reference(config.stain_reference)
    assert fitted != stain.default_reference()
    he = torch.tensor(fitted.he).view(3, 2)
    assert torch.linalg.norm(he, dim=0) == pytest.approx([1.0, 1.0], abs=1e-3)  # unit optical-density vectors
