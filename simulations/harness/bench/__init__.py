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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from common.config.choices import POLICIES
from common.logging_setup import log_levels
from common.versions import machine, versions
from simulations.harness.bench.model_cost import bench_communication, bench_secure_noise
from simulations.harness.bench.scale import bench_scale
from simulations.harness.bench.stain import bench_stain
from simulations.harness.bench.throughput import PRIVACY_UNITS, bench_throughput

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
    # Only JSON on stdout and little on stderr while benchmarking.
    with log_levels({"fedpath": logging.WARNING, "fedpath.weights": logging.ERROR}):
        if args.name == "throughput":
            bench_throughput(args.quick, args.out, args.privacy_unit, tuple(args.policies or ()) or None)
        else:
            BENCHES[args.name](args.quick, args.out)
    return 0


def _write_meta(args: argparse.Namespace) -> None:
    """Beside --out: the command, date, machine and versions the lines were measured with."""
    meta = {
        "command": f"python -m simulations.harness.bench {args.name}" + (" --quick" if args.quick else "")
        + (f" --privacy-unit {args.privacy_unit}" if args.name == "throughput" and args.privacy_unit != "patch" else "")
        + "".join(f" --policy {p}" for p in (args.policies or []) if args.name == "throughput"),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "versions": versions(),
    }
    args.out.with_name(args.out.name + ".meta.json").write_text(json.dumps(meta, indent=1))
