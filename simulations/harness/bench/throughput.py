"""Local training throughput: images/s of the sites' own training function, DP vs non-DP."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from common.config.choices import CONV_POLICIES, POLICIES
from common.data.synthetic import make_synthetic
from common.model.inputs import device
from common.model.network import apply_policy, build_resnet
from common.privacy.randomness import public_randomness
from common.training.local import train_local
from common.training.patient_dp import DEFAULT_MAX_PATCHES_PER_PATIENT
from common.training.settings import TrainSettings
from common.training.steps import grad_sample_mode_for
from simulations.harness.bench.base import DEFAULT_POLICY, cached_synthetic, emit


def throughput_once(
    policy: str, image_size: int, dp: bool, images: int, batch: int, seed: int, mode: str = "hooks",
    privacy_unit: str = "patch",
) -> float:
    """Images/s of one epoch of the sites' real training function on synthetic patches.

    At the patient unit the synthetic slides (3-8 patches each) are the patients; a step then
    holds at most `batch` patches in expectation, as at the patch unit (same epoch of images).
    """
    data = cached_synthetic(images, image_size, seed)
    model = apply_policy(build_resnet("resnet18", len(data.classes), None, seed), policy)
    settings = TrainSettings(epochs=1, batch_size=batch, lr=0.05, momentum=0.9, randomness=public_randomness(f"bench-{seed}"), dp=dp,
                             noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
                             privacy_unit=privacy_unit)
    warmup = make_synthetic(2 * batch, image_size, seed + 1)
    train_local(model, warmup, settings, desc="warm-up")  # allocator and kernel warm-up
    started = time.perf_counter()
    outcome = train_local(model, data, settings, desc=f"{policy} {'DP' if dp else 'non-DP'} {image_size}px")
    elapsed = time.perf_counter() - started
    return outcome.num_examples / elapsed


PRIVACY_UNITS = {"patch": ("patch",), "patient": ("patient",), "both": ("patch", "patient")}


def bench_throughput(
    quick: bool, out: Path | None, privacy_unit: str = "patch", policies: tuple[str, ...] | None = None
) -> None:
    """Non-DP and DP of each policy, back to back in this process, alternating, median of repeats.

    The DP path is the one sites use (`grad-sample-mode=auto`); where that is ghost
    clipping, Opacus' plain hooks mode is measured too, for comparison. `privacy_unit`
    "patient" measures patient-level DP-SGD, "both" measures patch and patient level
    alternating with the same non-DP runs (one line per unit, same `nondp_img_s`).
    """
    units = PRIVACY_UNITS[privacy_unit]
    repeats = 1 if quick else 3
    for image_size in (28, 64):
        for policy in policies or POLICIES:
            auto = grad_sample_mode_for(policy)
            for mode in dict.fromkeys([auto, "hooks"]):
                slow = mode == "hooks" and policy in CONV_POLICIES
                images = (256 if slow else 1024) if quick else (512 if slow else 3072)
                if image_size == 64:
                    images //= 2
                nondp: list[float] = []
                dp: dict[str, list[float]] = {unit: [] for unit in units}
                for r in range(repeats):
                    nondp.append(throughput_once(policy, image_size, False, images, 64, seed=r))
                    for unit in units:
                        dp[unit].append(throughput_once(policy, image_size, True, images, 64, seed=r, mode=mode,
                                                         privacy_unit=unit))
                a = statistics.median(nondp)
                for unit in units:
                    b = statistics.median(dp[unit])
                    emit({
                        "bench": "throughput", "policy": policy, "image_size": image_size, "batch_size": 64,
                        "arch": "resnet18", "grad_sample_mode": mode, "sites_use": mode == auto,
                        "privacy_unit": unit,
                        **({"max_patches_per_patient": DEFAULT_MAX_PATCHES_PER_PATIENT} if unit == "patient" else {}),
                        "nondp_img_s": round(a, 1), "dp_img_s": round(b, 1), "ratio": round(b / a, 3),
                        "default": policy == DEFAULT_POLICY and mode == auto, "images": images, "repeats": repeats,
                        "threads": torch.get_num_threads(), "device": str(device()),
                    }, out)
