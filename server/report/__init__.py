"""The evaluation report: composed offline from a run directory, never during training.

`python -m server.report RUN_DIR` (or `fedpath-report`) rebuilds report.json and report.html
from what a run recorded. The pieces, each with one job:

* `writer`    — `write_report` and the command line;
* `compose`   — report.json from the run's records (rounds, sites, privacy, audit);
* `baselines` — baseline result files a report compares against;
* `format`    — how numbers are written;
* `privacy_text` — every sentence about a site's unit, ε and δ, from what the sites replied;
* `officer`   — the data-protection officer's paragraph (the same unit wording);
* `applied`   — each privacy key of the run config, asked vs what the sites applied;
* `advice`    — what to do about a run that ended without a federated model;
* `html`      — what the page shows (`build_view`), rendered with `template` and `plots`;
* `tables`    — the page's tables, one row per site, class, round, baseline or transfer.
"""

from server.report.writer import main, write_report

__all__ = ["main", "write_report"]
