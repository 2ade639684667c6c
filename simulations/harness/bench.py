"""Benchmarks that print numbers: `python -m simulations.harness.bench NAME [--quick]`.

    throughput     local training images/s per policy, DP vs non-DP, 28 and 64 px, batch 64
                   (--privacy-unit patch|patient|both, --policy P to measure some policies only)
    communication  bytes per site per round for each policy and architecture
    scale          wall time per round, peak memory and time outside local training vs sites
    stain          stain handling: per-image normalisation cost, DP img/s with stain augmentation on/off

Each prints one JSON object per result line (and nothing else on stdout), so results can be
piped into files and tables; `--out FILE` also appends them there.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import RunConfig
from common.choices import CONV_POLICIES, POLICIES

DEFAULT_POLICY = RunConfig().policy


def emit(record: dict[str, Any], out: Path | None) -> None:
    line = json.dumps(record, sort_keys=False)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as handle:
            handle.write(line + "\n")


# -- throughput ----------------------------------------------------------------------------
def _throughput_once(
    policy: str, image_size: int, dp: bool, images: int, batch: int, seed: int, mode: str = "hooks",
    privacy_unit: str = "patch",
) -> float:
    """Images/s of one epoch of the sites' real training function on synthetic patches.

    At the patient unit the synthetic slides (3-8 patches each) are the patients; a step then
    holds at most `batch` patches in expectation, as at the patch unit (same epoch of images).
    """
    from common.data.synthetic import make_synthetic
    from common.model import apply_policy, build_resnet
    from common.training import TrainSettings, train_local

    data = _synthetic(images, image_size, seed)
    model = apply_policy(build_resnet("resnet18", len(data.classes), None, seed), policy)
    settings = TrainSettings(epochs=1, batch_size=batch, lr=0.05, momentum=0.9, seed=seed, dp=dp,
                             noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
                             privacy_unit=privacy_unit)
    warmup = make_synthetic(2 * batch, image_size, seed + 1)
    train_local(model, warmup, settings, desc="warm-up")  # allocator and kernel warm-up
    started = time.perf_counter()
    outcome = train_local(model, data, settings, desc=f"{policy} {'DP' if dp else 'non-DP'} {image_size}px")
    elapsed = time.perf_counter() - started
    return outcome.num_examples / elapsed


_SYNTHETIC: dict[tuple[int, int, int], Any] = {}


def _synthetic(images: int, image_size: int, seed: int) -> Any:
    from common.data.synthetic import make_synthetic

    key = (images, image_size, seed)
    if key not in _SYNTHETIC:
        _SYNTHETIC[key] = make_synthetic(images, image_size, seed)
    return _SYNTHETIC[key]


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
    import torch

    from common.training import DEFAULT_MAX_PATCHES_PER_PATIENT, grad_sample_mode_for

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
                    nondp.append(_throughput_once(policy, image_size, False, images, 64, seed=r))
                    for unit in units:
                        dp[unit].append(_throughput_once(policy, image_size, True, images, 64, seed=r, mode=mode,
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
                        "threads": torch.get_num_threads(), "device": str(_device()),
                    }, out)


def _device() -> Any:
    from common.training import device

    return device()


# -- communication -------------------------------------------------------------------------
def bench_communication(quick: bool, out: Path | None) -> None:
    """Exact payload per site per round and direction, from the real model and Flower records."""
    from common.model import ARCHITECTURES, POLICIES, apply_policy, build_resnet, count_bytes, get_trainable_state
    from common.records import record_bytes, to_array_record

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


# -- scale ---------------------------------------------------------------------------------
def _sample_memory(flwr_home: Path, stop: threading.Event, peak: dict[str, float]) -> None:
    from simulations.processes import processes_with_env

    while not stop.is_set():
        total = 0
        for pid in processes_with_env("FLWR_HOME", str(flwr_home)):
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1]) * 1024
            except OSError:
                continue
        peak["rss"] = max(peak.get("rss", 0.0), float(total))
        stop.wait(0.5)


def bench_scale(quick: bool, out: Path | None) -> None:
    """Real `flwr run` simulations with 5..50 sites; rounds after the first are timed."""
    from simulations.run import run_simulation

    per_site, rounds = (60, 3) if quick else (120, 4)
    for sites in (5, 10, 20, 50):
        with tempfile.TemporaryDirectory(prefix="fedpath-scale-") as tmp:
            home = Path(tmp) / "flwr-home"
            overrides = (
                f"num-server-rounds={rounds} synthetic-images={int(per_site * sites / 0.68)} image-size=32 "
                f"batch-size=32 epsilon=8.0 delta=1e-4 min-site-examples=5 bootstrap-samples=0 seed=3"
            )
            stop, peak = threading.Event(), {}
            sampler = threading.Thread(target=_sample_memory, args=(home.resolve(), stop, peak), daemon=True)
            sampler.start()
            started = time.monotonic()
            with open(Path(tmp) / "run.log", "w") as log:
                run_dir = run_simulation(sites, [overrides], Path(tmp) / "runs", home, stream_to=log, timeout=3000)
            total = time.monotonic() - started
            stop.set()
            sampler.join()
            lines = [json.loads(t) for t in (run_dir / "metrics.jsonl").read_text().splitlines()]
            steady = lines[2:]  # round 1 includes starting Ray actors and loading data in them
            walls = [b["time"] - a["time"] for a, b in zip(lines[1:], lines[2:])]
            train = [sum(s["metrics"].get("train-seconds", 0.0) for s in line["sites"]) for line in steady]
            emit({
                "bench": "scale", "sites": sites, "rounds_timed": len(walls), "images_per_site": per_site,
                "image_size": 32, "policy": DEFAULT_POLICY, "dp": True,
                "wall_s_per_round": round(statistics.mean(walls), 2),
                "local_training_s_per_round": round(statistics.mean(train), 2),
                "share_outside_local_training": round(1 - statistics.mean(train) / statistics.mean(walls), 3),
                "first_round_s": round(lines[1]["time"] - lines[0]["time"], 2),
                "total_run_s": round(total, 1),
                "peak_rss_mib": round(peak.get("rss", 0.0) / 2**20, 1),
            }, out)


def bench_secure_noise(quick: bool, out: Path | None) -> None:
    """What Opacus' secure-mode noise (sites' default) costs per DP step, against plain noise.

    Secure mode draws four Gaussians per value (robust to floating-point attacks) where plain
    mode draws one; both use the same generator. Timed on each policy's trainable tensors of
    ResNet-18 (4 classes), median of repeats; compare with a DP step's time from `throughput`.
    """
    import torch
    from opacus.optimizers.optimizer import _generate_noise

    from common.model import apply_policy, build_resnet

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


# -- stain handling ------------------------------------------------------------------------
def _stain_images(per_class: int, image_size: int) -> tuple[Any, str]:
    """Real LC25000 patches (evenly spaced in each class) where ../shared/data has them, else synthetic."""
    from common.data.folder import load_image_folder
    from simulations.harness.experiment import LC25000

    if not (LC25000 / "groups.csv").exists():
        return _synthetic(3 * per_class, image_size, 0), "synthetic"
    with tempfile.TemporaryDirectory(prefix="fedpath-stain-") as tmp:
        for name in sorted(p.name for p in LC25000.iterdir() if p.is_dir()):
            (Path(tmp) / name).mkdir()
            files = sorted((LC25000 / name).iterdir())
            for source in files[:: max(1, len(files) // per_class)][:per_class]:
                (Path(tmp) / name / source.name).symlink_to(source)
        return load_image_folder(Path(tmp), image_size, use_cache=False), "lc25000-lung"


def _stain_throughput(data: Any, unit: str, stain: bool, seed: int) -> float:
    from common.model import apply_policy, build_resnet
    from common.training import TrainSettings, train_local

    model = apply_policy(build_resnet("resnet18", len(data.classes), None, seed), DEFAULT_POLICY)
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.05, momentum=0.9, seed=seed, dp=True,
                             noise_multiplier=1.0, max_grad_norm=1.0, privacy_unit=unit, stain_augment=stain)
    started = time.perf_counter()
    outcome = train_local(model, data, settings, desc=f"stain {'on' if stain else 'off'}")
    return outcome.num_examples / (time.perf_counter() - started)


def _augment_ms_per_image(images: Any, repeats: int) -> float:
    """The augmenter's own cost per image and step: batches of 64, median of passes over the set."""
    import torch

    from common.data.stain_handling import StainAugmenter

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
    import dataclasses

    import numpy as np
    import torch

    from common.data import stain_handling as stain

    repeats = 1 if quick else 3
    for image_size in (28, 64):
        per_class = (256 if image_size == 28 else 128) * (1 if quick else 2)
        data, source = _stain_images(per_class, image_size)
        data = dataclasses.replace(data, groups=np.arange(len(data)) // 4)
        started = time.perf_counter()
        _, fallbacks = stain.normalise_images(data.images, stain.default_reference())
        normalise_s = time.perf_counter() - started
        started = time.perf_counter()
        stain.normalise_images(data.images.copy(), stain.default_reference())
        cached_s = time.perf_counter() - started
        started = time.perf_counter()
        _, usable = stain.stain_bases(data.images)
        fit_s = time.perf_counter() - started
        augment_ms = _augment_ms_per_image(data.images, repeats)
        warmup = _synthetic(128, image_size, 1)
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
                "repeats": repeats, "threads": torch.get_num_threads(), "device": str(_device()),
            }, out)


BENCHES: dict[str, Callable[[bool, Path | None], None]] = {
    "stain": bench_stain,
    "throughput": bench_throughput,
    "secure-noise": bench_secure_noise,
    "communication": bench_communication,
    "scale": bench_scale,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.harness.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHES))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (minutes on 2 CPU cores)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--privacy-unit", choices=sorted(PRIVACY_UNITS), default="patch",
                        help="throughput: DP at the patch level, the patient level, or both (default: patch)")
    parser.add_argument("--policy", action="append", choices=POLICIES, dest="policies",
                        help="throughput: measure only this policy (repeatable; default: all)")
    args = parser.parse_args(argv)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("")
        _write_meta(args)
    from common.logging_setup import log_levels

    # Only JSON on stdout and little on stderr while benchmarking.
    with log_levels({"fedpath": logging.WARNING, "fedpath.weights": logging.ERROR}):
        if args.name == "throughput":
            bench_throughput(args.quick, args.out, args.privacy_unit, tuple(args.policies or ()) or None)
        else:
            BENCHES[args.name](args.quick, args.out)
    return 0


def _write_meta(args: argparse.Namespace) -> None:
    """Beside --out: the command, date, machine and versions the lines were measured with."""
    from datetime import UTC, datetime

    from common.versions import machine, versions

    meta = {
        "command": f"python -m simulations.harness.bench {args.name}" + (" --quick" if args.quick else "")
        + (f" --privacy-unit {args.privacy_unit}" if args.name == "throughput" and args.privacy_unit != "patch" else "")
        + "".join(f" --policy {p}" for p in (args.policies or []) if args.name == "throughput"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "versions": versions(),
    }
    args.out.with_name(args.out.name + ".meta.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    sys.exit(main())
