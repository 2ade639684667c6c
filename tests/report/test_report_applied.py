"""Asked vs applied: the report marks each privacy key by what the sites replied, never by the run config.

Issue 24 (3): a coordinator set `delta=0.05`, `privacy-unit=patch`, `site-epsilon-budget=1000`,
`site-dp-seed`, `strict=true`, `noise-multiplier=0.3`, `epsilon=1000`; the deployed sites ignored all of
it, yet the report's run configuration listed them as if they applied. Here the sites' replies say
what they applied (tests/helpers/accounted_runs.py), and each key must be marked from those replies.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from markupsafe import escape

from server.report.applied import NOT_REPORTED, OVERRIDDEN, PRIVACY_KEYS, VERDICT_TEXT, privacy_settings
from server.report.compose import compose_report
from server.report.html import build_view, render_html
from tests.helpers.accounted_runs import DELTA, SIGMA, SiteCase, write_accounted_run

ATTACK = {"delta": 0.05, "privacy-unit": "patch", "site-epsilon-budget": 1000.0, "site-dp-seed": "ab" * 16,
          "strict": True, "noise-multiplier": 0.3, "epsilon": 1000.0, "site-share-diagnostics": True,
          "site-epsilon-per-period": 0.0}


# What deployed sites name in their replies' `overridden` when asked ATTACK (client/overrides.py).
NAMED = ("delta", "privacy-unit", "site-epsilon-budget", "site-dp-seed", "strict", "site-share-diagnostics")


def _settings(tmp_path: Path, config: dict, named: tuple[str, ...] = ()) -> dict[str, dict]:
    run_dir = write_accounted_run(tmp_path, [SiteCase("site-0", "patient", overridden=named),
                                             SiteCase("site-1", "patient", overridden=named)], 2, config=config)
    report = compose_report(run_dir)
    return {row["key"]: row for row in report["privacy_settings"]}


def test_keys_the_sites_did_not_apply_are_marked_overridden_with_what_they_applied(tmp_path: Path) -> None:
    rows = _settings(tmp_path, ATTACK, NAMED)
    for key in ("delta", "privacy-unit", "site-epsilon-budget", "site-dp-seed", "noise-multiplier", "epsilon",
                "site-share-diagnostics", "strict"):
        assert rows[key]["verdict"] == OVERRIDDEN, (key, rows[key])
    assert rows["delta"]["sites"][0] == {"site_id": "site-0", "applied": "1e-05", "status": OVERRIDDEN}
    assert rows["privacy-unit"]["sites"][1]["applied"] == "patient"
    assert rows["noise-multiplier"]["sites"][0]["applied"] == f"{SIGMA:g}"
    assert rows["site-dp-seed"]["sites"][0]["applied"] == "secure"  # the mode; the seed itself is never sent
    assert rows["delta"]["text"] == ("delta = 0.05: overridden by the sites' own settings (site-0 applied 1e-05; "
                                     "site-1 applied 1e-05)")
    # a key whose value no reply carries: overridden where the sites name it, applied where they reply without
    # naming it; and what no reply can show at all is said to be unconfirmed, never marked as applied
    assert rows["strict"]["sites"][0] == {"site_id": "site-0", "applied": "its own setting", "status": OVERRIDDEN}
    assert rows["site-epsilon-per-job"]["verdict"] == "applied"
    assert rows["max-patches-per-patient"]["verdict"] == NOT_REPORTED
    assert rows["max-grad-norm"]["verdict"] == "applied" and rows["dp"]["verdict"] == "applied"
    assert set(rows) == set(PRIVACY_KEYS)


def test_keys_that_ask_the_site_to_decide_are_marked_so(tmp_path: Path) -> None:
    rows = _settings(tmp_path, {"privacy-unit": "auto", "noise-multiplier": 0.0, "delta": 0.0})
    assert {rows[k]["verdict"] for k in ("privacy-unit", "noise-multiplier", "delta")} == {"site-decides"}


def test_keys_the_sites_applied_are_marked_applied(tmp_path: Path) -> None:
    rows = _settings(tmp_path, {"delta": DELTA, "privacy-unit": "patient", "epsilon": 2.0,
                                "noise-multiplier": SIGMA, "site-share-diagnostics": False})
    for key in ("delta", "privacy-unit", "noise-multiplier", "site-share-diagnostics", "site-dp-seed", "epsilon"):
        assert rows[key]["verdict"] == "applied", (key, rows[key])  # epsilon: granted in full


def test_a_site_that_refused_to_train_without_dp_overrides_dp() -> None:
    site = {"site_id": "site-0", "replied": True, "dp": False,
            "refusals": [{"round": 1, "code": "non-private-not-allowed"}]}
    dp = {row["key"]: row for row in privacy_settings({"dp": False}, [site])}["dp"]
    assert dp["verdict"] == OVERRIDDEN and "refused to train without DP" in dp["sites"][0]["applied"]


@pytest.mark.slow  # renders the page (plots)
def test_the_run_configuration_on_the_page_marks_each_privacy_key(tmp_path: Path) -> None:
    report = compose_report(write_accounted_run(tmp_path, [SiteCase("site-0", "patch")], 2, config=ATTACK))
    marks = {key: verdict for key, _, verdict, _ in build_view(report)["config_items"]}
    assert marks["delta"] == marks["site-epsilon-budget"] == marks["epsilon"] == OVERRIDDEN
    assert marks["privacy-unit"] == "applied" and marks["max-patches-per-patient"] == NOT_REPORTED
    assert marks["num-server-rounds"] == ""  # not a privacy key: no mark
    text = render_html(report)
    assert ('<span class="k mono">delta</span><span class="v mono">0.05</span><span class="pill bad" '
            f'title="{escape(VERDICT_TEXT[OVERRIDDEN])}">overridden</span>') in text
    assert "Run configuration (to reproduce or audit this run)" in text
