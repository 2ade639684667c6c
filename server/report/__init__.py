"""The evaluation report: composed offline from a run directory, never during training.

`python -m server.report RUN_DIR` (or `fedpath-report`) rebuilds report.json and report.html
from what a run recorded. The pieces, each with one job:

* `writer`    — `write_report` and the command line;
* `compose`   — report.json from the run's records (rounds, sites, privacy, audit);
* `baselines` — baseline result files a report compares against;
* `format`    — how numbers and privacy sentences are written;
* `html`      — what the page shows (`build_view`), rendered with `template` and `plots`;
* `tables`    — the page's tables, one row per site, class, round, baseline or transfer.
"""

from server.report.writer import main, write_report

__all__ = ["main", "write_report"]
