"""Run a federated DP simulation end to end and print where its report is.

    python -m simulations.run                       # 5 hospitals, the embedded synthetic default
    python -m simulations.run --sites 10 --run-config "num-server-rounds=3 policy='head'"

This is `flwr run . --stream` against a private local SuperLink (see
`simulations/local_superlink.py`) with `--federation-config num-supernodes=N`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from common.config.checks import NAMED_DATASETS
from common.config.run_config import ConfigError, load_app_config, resolve_path
from common.paths import REPO, REPORT_FILE, REPORT_HTML_FILE
from common.privacy.delta import auto_delta, check_delta
from deploy.flower import flower_bin
from simulations.local_superlink import LocalSuperLink


def preflight(run_config: list[str], app_dir: Path = REPO, sites: int | None = None) -> None:
    """Reject a bad run config, a missing dataset or unusable data before any Flower process starts.

    The data is loaded and checked by the very functions the ServerApp and the simulated sites
    call (`common.data.sources`), so a data error is said here once, as one block, instead of as a
    traceback from every Ray actor. Nothing is paid twice: those loaders are cached in this process
    (later checks here reuse them) and decoded ImageFolder trees on disk (FEDPATH_CACHE_DIR), where
    the server and the sites find them. With `sites`, every simulated site's share is cut
    too. The built-in synthetic generator is not run here: it cannot make messy data.
    """
    config = load_app_config(app_dir / "pyproject.toml", run_config)
    if config.dataset not in NAMED_DATASETS and not resolve_path(config.dataset, app_dir).exists():
        raise ConfigError(f"dataset {config.dataset!r} not found (looked for {resolve_path(config.dataset, app_dir)})")
    if config.resume_from:
        from server.resume import ResumeError, check_start  # noqa: PLC0415 - torch stays out of --help

        try:  # the ServerApp checks the same; said here once, before any Flower process starts
            check_start(resolve_path(config.resume_from, app_dir), config.to_mapping())
        except ResumeError as err:
            raise ConfigError(str(err)) from None
    if config.dataset == "synthetic":
        return

    from common.data import sources  # noqa: PLC0415 - data code (numpy, PIL) stays out of --help
    from common.data.checks import check_splittable  # noqa: PLC0415
    from common.data.imageset import DataError  # noqa: PLC0415

    def as_the_server_reads(path: str) -> str:
        """The server runs in `app_dir`; the same string where this process agrees keeps one cache entry."""
        same = path in NAMED_DATASETS or not path or resolve_path(path) == resolve_path(path, app_dir)
        return path if same else str(resolve_path(path, app_dir))

    data = dataclasses.replace(config, dataset=as_the_server_reads(config.dataset),
                               groups_csv=as_the_server_reads(config.groups_csv))
    try:
        pool, official_test = sources.load_pool(data)  # what dataset_classes / central_test_set read
        if official_test is None:
            check_splittable(pool.labels, pool.groups, pool.classes, f"dataset {data.dataset}")
        test = sources.central_test_set(data)
        trained = [sources.simulated_site(data, site, sites or 0).train.class_counts() for site in range(sites or 0)]
        copies = sources.copies_of_test_images(data)
    except DataError as err:
        body = textwrap.fill(str(err), width=100, initial_indent="  ", subsequent_indent="  ",
                             break_long_words=False, break_on_hyphens=False)
        raise ConfigError(
            f"the data cannot be used, so nothing was started.\n  dataset: {data.dataset}\n{body}\n"
            "  Every data message and what to do: docs/TROUBLESHOOTING.md, section 'Site data'."
        ) from None
    print(f"data: {len(pool)} images of {len(pool.classes)} classes ({', '.join(pool.classes)}), "
          f"{len(test)} in the central test set; skipped {pool.report.skipped} unreadable and "
          f"{pool.report.hidden} hidden files", flush=True)
    for line in data_warnings(pool, test, copies, trained):
        print(line, flush=True)


def data_warnings(pool: Any, test: Any, copies: int, trained: list[list[int]]) -> list[str]:
    """What the experimenter should know before the run: conversions, dropped copies, test copies, untaught classes.

    `trained` holds each simulated site's training class counts (none: the sites were not cut here).
    """
    lines = [f"data: converted {pool.report.converted} images: {pool.report.summary()}"] if pool.report.conversions else []
    if pool.report.conflicting:
        lines.append(f"data: dropped {pool.report.conflicting} images stored under two classes (named in the log)")
    if copies:
        lines.append(f"data: excluded {copies} images from every site: byte-identical copies of central test images")
    if trained:
        totals = [sum(counts) for counts in zip(*trained)]
        for name, tested, held in zip(test.classes, test.class_counts(), totals):
            if tested and not held:
                lines.append(f"warning: class {name}: no training images at any of the {len(trained)} sites, but "
                             f"{tested} in the central test set: every one of them will be misclassified")
    return lines


def preflight_privacy(run_config: list[str], sites: int, app_dir: Path = REPO) -> None:
    """Refuse a unit of privacy the sites cannot decide, or a δ that some simulated site could not accept
    (δ > 1/(10·n)), before anything starts.

    The sites would refuse them themselves, each with a failure; this says it once, with the numbers
    (the launcher is the experimenter's own process, so counts may be printed here). The unit: data that
    names no patients trains only with `privacy-unit='patch'` said explicitly (client.privacy_unit).
    """
    config = load_app_config(app_dir / "pyproject.toml", run_config)
    if not config.dp:
        return
    from client.privacy_unit import resolve_privacy_unit  # noqa: PLC0415 - torch-free; kept out of --help
    from common.data.sources import simulated_site  # loads torch-free data code; kept out of --help

    if sites:
        resolve_privacy_unit(config.privacy_unit, simulated_site(config, 0, sites), deployed=False)  # UnitUndecided
    if config.delta == 0:
        return

    sizes = {k: len(simulated_site(config, k, sites).train) for k in range(sites)}
    bad = {k: n for k, n in sizes.items() if check_delta(config.delta, n)}
    if bad:
        smallest = min(sizes.values())
        raise ConfigError(
            f"delta={config.delta:g} is too large for {len(bad)} of {sites} simulated sites: it must be at most "
            f"1/(10·n) for a site of n training records ({', '.join(f'site-{k}: n={n}' for k, n in bad.items())}). "
            f"Use delta <= {auto_delta(smallest):.3g}, or delta=0 for 1/(10·n) per site."
        )


def run_simulation(
    sites: int, run_config: list[str], output_dir: Path, flwr_home: Path, stream_to: object = None,
    timeout: float | None = None, app_dir: Path = REPO,
) -> Path:
    """Run one simulation; returns its run directory (raises if it produced no report)."""
    preflight(run_config, app_dir, sites)
    preflight_privacy(run_config, sites, app_dir)
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    before = set(output_dir.glob("run-*"))
    overrides = [f"output-dir='{output_dir}'", *run_config]
    with LocalSuperLink(flwr_home.resolve(), cwd=app_dir) as link:
        command = [
            flower_bin("flwr"), "run", str(app_dir), "--stream",
            "--federation-config", f"num-supernodes={sites}",
        ]
        for override in overrides:
            command += ["--run-config", override]
        print("$", " ".join(command), flush=True)
        completed = subprocess.run(command, env=link.env, cwd=app_dir, stdout=stream_to, stderr=subprocess.STDOUT,
                                   timeout=timeout, check=False)
    resumed = load_app_config(app_dir / "pyproject.toml", run_config).resume_from
    new = sorted(set(output_dir.glob("run-*")) - before, key=lambda p: p.stat().st_mtime)
    if resumed:
        new = [resolve_path(resumed, app_dir)]
    if not new:
        raise RuntimeError(f"the run wrote nothing under {output_dir}; see the log above and {link.log_file}")
    run_dir = new[-1]
    if not (run_dir / REPORT_FILE).exists():
        raise RuntimeError(f"the run did not finish: {run_dir} has no report.json; see the log above")
    check_outcome(run_dir)
    if completed.returncode != 0:
        raise RuntimeError(f"flwr run exited with {completed.returncode}")
    return run_dir


class NoSiteTrained(RuntimeError):
    """Every site refused or failed in every round: the run produced no federated model."""


def check_outcome(run_dir: Path) -> dict:
    """The run's report; raises NoSiteTrained, with each site's reasons, when no site trained."""
    report = json.loads((run_dir / REPORT_FILE).read_text())
    if report["run"].get("no_site_trained"):
        advice = report["run"].get("next_step")  # what to do next (never a resume that cannot help)
        raise NoSiteTrained(f"{run_dir}: no site trained, the model is the starting model\n{site_summary(report)}"
                            + (f"\n{advice}" if advice else ""))
    return report


def site_summary(report: dict) -> str:
    """One line per site: rounds trained and, for the others, the (fixed, privacy-safe) reasons."""
    lines = []
    for site in report.get("sites", []):
        trained = [r for r in site.get("rounds_participated", []) if r not in site.get("rejected_rounds", [])]
        reasons = sorted({f"{r['status']}: {r['reason']}" for r in site.get("reasons", [])})
        text = f"trained rounds {trained}" if trained else "never trained"
        lines.append(f"  - {site['site_id']}: {text}" + (f"; {'; '.join(reasons)}" if reasons else ""))
    return "\n".join(lines) or "  - no site answered"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=5, help="number of simulated hospitals (default 5)")
    parser.add_argument("--run-config", action="append", default=[], metavar="'K=V ...'",
                        help="run config overrides, as for `flwr run --run-config` (repeatable)")
    parser.add_argument("--output-dir", type=Path, default=REPO / "runs", help="where run directories go")
    parser.add_argument("--flwr-home", type=Path, default=REPO / ".flwr", help="Flower home for this launcher")
    args = parser.parse_args(argv)
    if args.sites < 1:
        parser.error("--sites must be at least 1")
    started = time.time()
    try:
        run_dir = run_simulation(args.sites, args.run_config, args.output_dir, args.flwr_home)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = json.loads((run_dir / REPORT_FILE).read_text())
    print("\nsites:\n" + site_summary(report))
    print(f"\nfinished in {time.time() - started:.0f}s")
    print(f"run directory: {run_dir}")
    for name in (REPORT_HTML_FILE, REPORT_FILE):
        if (run_dir / name).exists():
            print(f"report: {run_dir / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
