"""Stain handling's cost: per-image normalisation and fit, and DP throughput with augmentation."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.data import stain_handling
from common.data.folder import load_image_folder
from common.data.stain_handling import StainAugmenter
from common.model.inputs import device
from common.model.network import apply_policy, build_resnet
from common.privacy.randomness import public_randomness
from common.training.local import train_local
from common.training.settings import TrainSettings
from simulations.harness.bench.base import DEFAULT_POLICY, cached_synthetic, emit
from simulations.harness.scenario import LC25000


def _stain_images(per_class: int, image_size: int) -> tuple[Any, str]:
    """Real LC25000 patches (evenly spaced in each class) where ../shared/data has them, else synthetic."""
    if not (LC25000 / "groups.csv").exists():
        return cached_synthetic(3 * per_class, image_size, 0), "synthetic"
    with tempfile.TemporaryDirectory(prefix="fedpath-stain-") as tmp:
        for name in sorted(p.name for p in LC25000.iterdir() if p.is_dir()):
            (Path(tmp) / name).mkdir()
            files = sorted((LC25000 / name).iterdir())
            for source in files[:: max(1, len(files) // per_class)][:per_class]:
                (Path(tmp) / name / source.name).symlink_to(source)
        return load_image_folder(Path(tmp), image_size, use_cache=False), "lc25000-lung"


def _stain_throughput(data: Any, unit: str, stain: bool, seed: int) -> float:
    model = apply_policy(build_resnet("resnet18", len(data.classes), None, seed), DEFAULT_POLICY)
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.05, momentum=0.9, randomness=public_randomness(f"bench-{seed}"), dp=True,
                             noise_multiplier=1.0, max_grad_norm=1.0, privacy_unit=unit, stain_augment=stain)
    started = time.perf_counter()
    outcome = train_local(model, data, settings, desc=f"stain {'on' if stain else 'off'}")
    return outcome.num_examples / (time.perf_counter() - started)


def _augment_ms_per_image(images: Any, repeats: int) -> float:
    """The augmenter's own cost per image and step: batches of 64, median of passes over the set."""
    augment = StainAugmenter(images, torch.Generator().manual_seed(0))
    tensors = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    passes = []
    for _ in range(2 * repeats + 1):
        started = time.perf_counter()
        for first in range(0, len(images), 64):
            rows = torch.arange(first, min(first + 64, len(images)))
            augment(tensors[rows], rows)
        passes.append(time.perf_counter() - started)
    return 1000 * statistics.median(passes) / len(images)


def bench_stain(quick: bool, out: Path | None) -> None:
    """Stain handling's cost: per-image normalisation and fit (once per site), DP img/s with augmentation on/off.

    Normalisation runs once per image set (cached), so rounds only pay for augmentation: the DP
    throughput of the default policy is measured with it off and on, alternating, median of repeats,
    at the patch and the patient unit (patients: blocks of 4 consecutive patches).
    """
    repeats = 1 if quick else 3
    for image_size in (28, 64):
        per_class = (256 if image_size == 28 else 128) * (1 if quick else 2)
        data, source = _stain_images(per_class, image_size)
        data = dataclasses.replace(data, groups=np.arange(len(data)) // 4)
        started = time.perf_counter()
        _, fallbacks = stain_handling.normalise_images(data.images, stain_handling.default_reference())
        normalise_s = time.perf_counter() - started
        started = time.perf_counter()
        stain_handling.normalise_images(data.images.copy(), stain_handling.default_reference())
        cached_s = time.perf_counter() - started
        started = time.perf_counter()
        _, usable = stain_handling.stain_bases(data.images)
        fit_s = time.perf_counter() - started
        augment_ms = _augment_ms_per_image(data.images, repeats)
        warmup = cached_synthetic(128, image_size, 1)
        _stain_throughput(warmup, "patch", True, 0)  # allocator, kernels, and the synthetic set's fit
        for unit in ("patch", "patient"):
            off, on = [], []
            for r in range(repeats):
                off.append(_stain_throughput(data, unit, False, r))
                on.append(_stain_throughput(data, unit, True, r))
            a, b = statistics.median(off), statistics.median(on)
            emit({
                "bench": "stain", "policy": DEFAULT_POLICY, "image_size": image_size, "data": source,
                "images": len(data), "privacy_unit": unit,
                "normalise_ms_per_image": round(1000 * normalise_s / len(data), 3),
                "fit_ms_per_image": round(1000 * fit_s / len(data), 3),
                "cached_lookup_ms_per_set": round(1000 * cached_s, 1),
                "normalise_fallback_share": round(fallbacks / len(data), 4),
                "augment_unusable_share": round(float(1 - usable.mean()), 4),
                "augment_ms_per_image": round(augment_ms, 3), "dp_ms_per_image": round(1000 / a, 3),
                "dp_img_s_stain_off": round(a, 1), "dp_img_s_augment_on": round(b, 1), "ratio": round(b / a, 3),
                "repeats": repeats, "threads": torch.get_num_threads(), "device": str(device()),
            }, out)
