"""Write (or re-write) a run's report: `python -m server.report RUN_DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from server.report_data import compose_report
from server.run_store import RunStore


def write_report(run_dir: Path) -> list[Path]:
    """Compose report.json from the run's records; returns the files written."""
    report = compose_report(run_dir)
    return [RunStore(run_dir).write_json("report.json", report)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory (holds run.json and metrics.jsonl)")
    args = parser.parse_args(argv)
    if not (args.run_dir / "run.json").exists():
        print(f"error: {args.run_dir} is not a fedpath run directory (no run.json)", file=sys.stderr)
        return 2
    for path in write_report(args.run_dir):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
