"""report.html: every section, self-contained, honest about weights, privacy and incomplete runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from markupsafe import escape

from common.config.toml_values import toml_value
from server.report import plots as report_plots
from server.report import write_report
from server.report.compose import compose_report
from server.report.html import SECTIONS, build_view, render_html
from tests.helpers.report_support import SECTION_IDS, Page, assert_self_contained, build_run_dir, png_sizes


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    missing = {(2, 1): ("refused", "this round would spend epsilon to 8.41 > budget 8"),
               (3, 2): ("failed", "DataError: /data/slide-17.png is not an image <script>alert(1)</script>"),
               (3, 0): ("rejected", "update norm 412.0 exceeds the DP bound 35.2")}
    return build_run_dir(tmp_path, rounds=3, sites=3, missing=missing)


def test_every_section_of_a_finished_run(finished_run: Path) -> None:
    paths = write_report(finished_run, strict=True)
    text = (finished_run / "report.html").read_text()
    assert paths[-1] == finished_run / "report.html"
    page = assert_self_contained(text)
    assert page.title == "fedpath report: run 4242"
    for section in SECTION_IDS:
        assert page.ids.count(section) == 1, section
    assert [s for s, _ in SECTIONS] == list(SECTION_IDS)  # the table of contents links to every section
    assert "incomplete-warning" not in page.ids
    assert "<dt>Stain handling</dt><dd>none (images as" in text  # the run's stain setting, stated

    sizes = png_sizes(text)
    assert len(sizes) == 4  # learning curves, confusion matrix, reliability, privacy (no baselines given)
    assert all(w >= 300 and h >= 200 for w, h in sizes), sizes

    report = json.loads((finished_run / "report.json").read_text())
    assert "85.0%" in text and "95% CI 78.8-90.6%" in text  # final accuracy 136/160 and its bootstrap CI
    assert report["final"]["accuracy"] == 0.85
    for site in report["sites"]:
        assert escape(site["privacy_statement"]) in text  # one plain privacy sentence per site
    for name in ("adipose", "stroma", "lymphocytes", "tumour"):
        assert f"<td>{name}</td>" in text  # per-class table
    assert "this round would spend epsilon to 8.41 &gt; budget 8" in text  # reasons for rounds without update
    assert "update norm 412.0 exceeds the DP bound 35.2" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # a site's text is data, never markup
    assert text.count('class="bar"') == 3  # one privacy-budget bar per site
    for key, value in report["run"]["config"].items():  # the full configuration
        assert f'<span class="k mono">{key}</span><span class="v mono">{escape(toml_value(value))}</span>' in text


@pytest.mark.slow  # renders reports with plots
def test_scratch_weights_are_never_presented_as_pretrained(tmp_path: Path) -> None:
    scratch = render_html(compose_report(build_run_dir(tmp_path / "a", weights_kind="none")))
    page = Page(scratch)
    assert "weights-warning" in page.ids
    assert "No pretrained weights: this model was trained from scratch." in scratch
    assert "not pretrained" in scratch and ">pretrained<" not in scratch

    pretrained = render_html(compose_report(build_run_dir(tmp_path / "b", weights_kind="imagenet")))
    assert "weights-warning" not in Page(pretrained).ids
    assert ">pretrained<" in pretrained and "f37072fd" + "0" * 56 in pretrained  # the checksum is shown


def test_an_incomplete_run_says_so_and_shows_what_exists(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, rounds=4, complete=False)
    text = render_html(compose_report(run_dir))
    page = assert_self_contained(text)
    assert "incomplete-warning" in page.ids and "Incomplete run." in text
    for section in SECTION_IDS:
        assert section in page.ids, section
    assert "Not available: the run has no final evaluation." in text
    assert "last recorded round (4); no final evaluation, so no confidence interval" in text
    assert len(png_sizes(text)) == 2  # learning curves and privacy spend: what the records support


def test_a_non_private_run_is_labelled_as_such(tmp_path: Path) -> None:
    text = render_html(compose_report(build_run_dir(tmp_path, dp=False)))
    assert "NOT differentially private" in text and "trained WITHOUT differential privacy" in text
    assert 'class="bar' not in text  # no budget bars for budgets that do not apply


def test_overspending_is_flagged(tmp_path: Path) -> None:
    report = compose_report(build_run_dir(tmp_path))
    report["sites"][1]["epsilon"] = 8.4  # would be a bug elsewhere: the report must show it, not hide it
    text = render_html(report)
    assert "budget-warning" in Page(text).ids and 'class="bar over"' in text
    assert "105.0% of budget" in text


@pytest.mark.slow  # renders reports with plots
def test_baselines_side_by_side(finished_run: Path) -> None:
    baselines = [
        {"name": "pooled non-private", "kind": "pooled", "accuracy": 0.9, "accuracy_ci95": [0.85, 0.94],
         "balanced_accuracy": 0.9, "macro_f1": 0.89, "macro_auc": 0.97, "ece": 0.04, "epsilon": None,
         "test_examples": 160, "notes": "all data in one place", "source": "pooled.json"},
        {"name": "local-only, worst site", "kind": "local-only", "accuracy": 0.6, "accuracy_ci95": None,
         "balanced_accuracy": None, "macro_f1": None, "macro_auc": None, "ece": None, "epsilon": None,
         "test_examples": None, "notes": "", "source": "local.json"},
    ]
    report = compose_report(finished_run, baselines)
    view = build_view(report)
    rows = view["baseline_rows"]
    assert [r["name"] for r in rows] == ["this run (federated, DP)", "pooled non-private", "local-only, worst site"]
    assert [r["delta_text"] for r in rows] == ["-", "+5.0", "-25.0"]  # points vs this run's 85.0%
    assert rows[0]["epsilon_text"] == "7.999" and rows[1]["ci_text"] == "85.0-94.0%"
    text = render_html(report)
    assert len(png_sizes(text)) == 5  # the comparison plot joins the others
    assert "pooled non-private" in text and "all data in one place" in text



def test_plots_say_when_there_is_nothing_to_draw() -> None:
    assert report_plots.learning_curves([], None) is None
    assert report_plots.confusion_matrix([], []) is None
    assert report_plots.reliability(None) is None
    assert report_plots.privacy_spend([{"round": 0, "sites": []}], []) is None
    assert report_plots.baselines([{"name": "only", "accuracy": 0.5}]) is None


def test_plots_leave_global_matplotlib_settings_alone() -> None:
    import matplotlib

    before = dict(matplotlib.rcParams)
    uri = report_plots.confusion_matrix([[3, 1], [0, 4]], ["a", "b"])
    assert uri is not None and uri.startswith("data:image/png;base64,")
    assert dict(matplotlib.rcParams) == before
