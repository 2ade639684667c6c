"""Write (or re-write) a run's report: report.json and report.html.

    python -m server.report RUN_DIR [--baseline [NAME=]PATH ...] [--clear-baselines]
    fedpath-report RUN_DIR ...                      (the same, as a console script)

The ServerApp calls `write_report` at the end of every run; the command re-makes the report
from the run directory alone (no retraining), e.g. after a crash, with newer report code, or
to set baseline runs beside it. Baselines given once are kept in RUN_DIR/baselines.json, so a
later plain regeneration still shows them. Formats: docs/REPORT.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from common.files import atomic_write_text
from common.paths import REPORT_FILE, REPORT_HTML_FILE, RUN_FILE
from server.report import baselines as report_baselines
from server.report.compose import compose_report
from server.run_store import RunStore

log = logging.getLogger("fedpath.report")


def write_report(run_dir: Path, baselines: list[dict[str, Any]] | None = None, strict: bool = False) -> list[Path]:
    """Compose report.json and render report.html from the run's records; returns the files written.

    `baselines`: records from `server.report.baselines` (default: those saved with the run).
    report.json is written first, so the facts survive even if drawing the page fails; the
    server (strict=False) then logs the failure instead of failing a finished training run,
    while the command (strict=True) reports it as an error.
    """
    run_dir = Path(run_dir)
    if baselines is None:
        baselines = report_baselines.stored(run_dir)
    report = compose_report(run_dir, baselines)
    written = [RunStore(run_dir).write_json(REPORT_FILE, report)]
    try:
        from server.report.html import render_html  # matplotlib and Jinja2 load only when needed

        html_path = run_dir / REPORT_HTML_FILE
        atomic_write_text(html_path, render_html(report))  # a browser never sees half a page
        written.append(html_path)
    except Exception:
        if strict:
            raise
        log.exception("report.html could not be written; report.json is complete. "
                      "Regenerate the page with: python -m server.report %s", run_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m server.report", description="Re-make report.json and report.html from a run directory.",
        epilog="Baseline formats and report.json's schema: docs/REPORT.md.",
    )
    parser.add_argument("run_dir", type=Path, help="a run directory (holds run.json and metrics.jsonl)")
    parser.add_argument(
        "--baseline", action="append", default=[], metavar="[NAME=]PATH",
        help="a result to set beside this run: another run directory, or a JSON file ({name, accuracy, ...}, "
             "a list of them, or the benchmark harness' results.json); repeatable; kept in RUN_DIR/baselines.json",
    )
    parser.add_argument("--clear-baselines", action="store_true",
                        help="forget the baselines kept with the run (before adding any given with --baseline)")
    args = parser.parse_args(argv)
    if not (args.run_dir / RUN_FILE).exists():
        print(f"error: {args.run_dir} is not a fedpath run directory (no run.json)", file=sys.stderr)
        return 2
    try:
        baselines = [] if args.clear_baselines else report_baselines.stored(args.run_dir)
        for spec in args.baseline:
            fresh = report_baselines.load(spec)
            names = {b["name"] for b in fresh}
            baselines = [b for b in baselines if b["name"] not in names] + fresh  # same name: the new one wins
    except report_baselines.BaselineError as err:
        print(f"error: baseline: {err}", file=sys.stderr)
        return 2
    if args.baseline or args.clear_baselines:
        report_baselines.save(args.run_dir, baselines)
    for path in write_report(args.run_dir, baselines, strict=True):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
