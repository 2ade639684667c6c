"""What the model's size costs: bytes each site sends per round, and the sites' noise per DP step."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from opacus.optimizers.optimizer import _generate_noise

from common.model.network import ARCHITECTURES, POLICIES, apply_policy, build_resnet, count_bytes, get_trainable_state
from common.privacy.randomness import public_randomness
from common.wire.records import record_bytes, to_array_record
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
    """What the sites' noise costs per DP step: Opacus' draws (before) against the AES-CTR stream (now).

    Before issue 21 sites drew Opacus' secure-mode noise (four Gaussians per value) from a torch
    generator seeded with 64 secret bits, of which torch's Mersenne Twister keeps 32; now every value
    is four Box-Muller Gaussians from the round key's AES-256-CTR stream (`common.privacy.randomness`).
    Timed on each policy's trainable tensors of ResNet-18 (4 classes), median of repeats; compare
    with a DP step's time from `throughput`.
    """
    repeats = 5 if quick else 21
    for policy in POLICIES:
        emit(_noise_costs(policy, repeats), out)


def _noise_costs(policy: str, repeats: int) -> dict[str, object]:
    model = apply_policy(build_resnet("resnet18", 4, None, 0), policy)
    params = [p for p in model.parameters() if p.requires_grad]
    total = int(sum(p.numel() for p in params))
    generator = torch.Generator().manual_seed(0)
    stream = public_randomness("bench-secure-noise").stream("dp-noise")
    timings = {
        secure: _median_seconds(lambda secure=secure: [_generate_noise(1.0, p, generator=generator, secure_mode=secure)
                                                       for p in params], repeats)
        for secure in (False, True)
    }
    # the sites draw one stream of all trainable values per step (common.training.dp_engine.SecretNoise)
    csprng = _median_seconds(lambda: stream.normal((total,), 1.0), repeats)
    return {
        "bench": "secure_noise", "policy": policy, "trainable_values": total,
        "plain_noise_ms_per_step": round(1000 * timings[False], 3),
        "secure_noise_ms_per_step": round(1000 * timings[True], 3),
        "csprng_noise_ms_per_step": round(1000 * csprng, 3),
        "extra_ms_per_step": round(1000 * (csprng - timings[True]), 3), "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def _median_seconds(work: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
