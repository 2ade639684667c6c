"""What the model's size costs: bytes each site sends per round, and secure noise per DP step."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from opacus.optimizers.optimizer import _generate_noise

from common.model import ARCHITECTURES, POLICIES, apply_policy, build_resnet, count_bytes, get_trainable_state
from common.records import record_bytes, to_array_record
from simulations.harness.bench.base import DEFAULT_POLICY, emit


def bench_communication(quick: bool, out: Path | None) -> None:
    """Exact payload per site per round and direction, from the real model and Flower records."""
    for arch in ARCHITECTURES:
        for classes in (3, 9):
            base = build_resnet(arch, classes, None, 0, scratch_statistics=False)
            for policy in POLICIES:
                state = get_trainable_state(apply_policy(base, policy))
                emit({
                    "bench": "communication", "arch": arch, "classes": classes, "policy": policy,
                    "tensors": len(state), "values": int(sum(v.size for v in state.values())),
                    "raw_bytes": count_bytes(state), "wire_bytes": record_bytes(to_array_record(state)),
                    "default": policy == DEFAULT_POLICY,
                }, out)


def bench_secure_noise(quick: bool, out: Path | None) -> None:
    """What Opacus' secure-mode noise (sites' default) costs per DP step, against plain noise.

    Secure mode draws four Gaussians per value (robust to floating-point attacks) where plain
    mode draws one; both use the same generator. Timed on each policy's trainable tensors of
    ResNet-18 (4 classes), median of repeats; compare with a DP step's time from `throughput`.
    """
    repeats = 5 if quick else 21
    for policy in POLICIES:
        model = apply_policy(build_resnet("resnet18", 4, None, 0), policy)
        params = [p for p in model.parameters() if p.requires_grad]
        generator = torch.Generator().manual_seed(0)
        timings: dict[bool, float] = {}
        for secure in (False, True):
            samples = []
            for _ in range(repeats):
                started = time.perf_counter()
                for p in params:
                    _generate_noise(1.0, p, generator=generator, secure_mode=secure)
                samples.append(time.perf_counter() - started)
            timings[secure] = statistics.median(samples)
        emit({
            "bench": "secure_noise", "policy": policy, "trainable_values": int(sum(p.numel() for p in params)),
            "plain_noise_ms_per_step": round(1000 * timings[False], 3),
            "secure_noise_ms_per_step": round(1000 * timings[True], 3),
            "extra_ms_per_step": round(1000 * (timings[True] - timings[False]), 3), "repeats": repeats,
            "threads": torch.get_num_threads(),
        }, out)
