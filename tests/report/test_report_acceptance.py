"""The report on round acceptance and on what each site's ε buys (issue 23).

Which rounds were kept, each round's validation accuracy and why it was or was not kept, the end model's round
in the headline; and next to each site's ε its noise per step σ/(q·N), checked against the numbers DP-SGD itself
uses (the sampler's q and record count, the optimiser's expected batch size), never against fixed prose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.privacy.accounting import noise_per_clip
from common.privacy.randomness import public_randomness
from common.training.dp_engine import site_accountant
from common.training.patient_dp import PatientPoissonSampler, make_private_per_patient
from server.report.compose import compose_report
from server.report.html import build_view, render_html
from server.report.officer import officer_text
from server.report.privacy_text import NOISE_PER_CLIP
from server.report.tables import round_rows, site_rows
from server.round_acceptance import NO_PRIVACY_COST, RULE
from tests.helpers.report_support import build_run_dir, check_schema


def test_the_report_says_which_rounds_were_kept_and_why_and_leads_with_the_end_model(tmp_path: Path) -> None:
    run_dir = build_run_dir(tmp_path, rounds=3, validation=[0.50, 0.60, 0.45, 0.50])
    report = compose_report(run_dir)
    check_schema(report)
    info = report["round_acceptance"]
    assert info["kept_rounds"] == [0, 1, 3] and info["end_model_round"] == 3  # a tie with the start (0.50) keeps round 3
    assert info["not_kept"] == [{"round": 2, "reason": "validation accuracy 0.4500 < the start's 0.5000; the model of round 1 stays"}]
    assert info["rule"] == RULE and info["privacy"] == NO_PRIVACY_COST
    rows = round_rows(report)
    assert [(r["round"], r["validation"], r["kept"]) for r in rows] == [
        ("0 (initial)", "50.0%", "kept"), ("1", "60.0%", "kept"), ("2", "45.0%", "not kept"), ("3", "50.0%", "kept")]
    assert rows[2]["not_kept"] and rows[2]["why"] == info["not_kept"][0]["reason"]
    view = build_view(report)
    assert "Kept rounds: 0-1, 3" in view["acceptance"] and "round 2: validation accuracy 0.4500 < the start's" in \
        view["acceptance"]
    page = render_html(report)
    assert 'id="round-acceptance"' in page and "not kept" in page


def test_a_dropped_last_round_makes_the_headline_name_the_kept_round(tmp_path: Path) -> None:
    report = compose_report(build_run_dir(tmp_path, rounds=2, validation=[0.5, 0.6, 0.4]))
    assert report["round_acceptance"]["end_model_round"] == 1 and report["final"]["kept_round"] == 1
    assert build_view(report)["headline"]["from"].startswith("end model = the model kept in round 1 (rounds run: 2)")


def test_a_run_without_round_acceptance_records_says_so(tmp_path: Path) -> None:
    report = compose_report(build_run_dir(tmp_path, rounds=2))
    assert not report["round_acceptance"]["recorded"] and report["rounds"][1]["acceptance"] is None
    assert "recorded no round acceptance" in build_view(report)["acceptance"]
    assert round_rows(report)[1]["kept"] == "-"


def test_each_sites_noise_per_step_is_sigma_over_q_n_from_its_reply(tmp_path: Path) -> None:
    report = compose_report(build_run_dir(tmp_path, rounds=2, sites=3))
    for site, row in zip(report["sites"], site_rows(report)):
        k = int(site["site_id"].removeprefix("site-"))
        assert site["noise_per_clip"] == pytest.approx(1.5 / (0.2 * (130 + k)))  # σ, q, N = privacy-records
        assert row["noise_per_clip"] == f"{site['noise_per_clip']:.3g}"
    text = officer_text(report["sites"])
    assert NOISE_PER_CLIP in text
    assert all(f"{s['site_id']}: {s['noise_per_clip']:.3g}" in text for s in report["sites"])
    assert NOISE_PER_CLIP.split("'")[0] in render_html(report)  # the page escapes apostrophes
    no_dp = compose_report(build_run_dir(tmp_path / "no-dp", rounds=1, dp=False))
    assert all(s["noise_per_clip"] is None for s in no_dp["sites"])
    assert "What each site's ε buys" not in officer_text(no_dp["sites"])


@pytest.mark.parametrize("patients, patches_each, batch", [(40, 1, 8), (25, 3, 16)])
def test_noise_per_clip_is_the_noise_dp_sgd_adds_to_the_averaged_gradient(patients: int, patches_each: int,
                                                                          batch: int) -> None:
    """Against the code that trains: the sampler's q and N, and the noise std the optimiser actually adds."""
    sigma, clip = 1.3, 0.7
    patient_of_patch = np.repeat(np.arange(patients), patches_each)
    keys = public_randomness("noise-per-clip")
    sampler = PatientPoissonSampler(patient_of_patch, batch, 4, keys.stream("dp-sampling"))
    ratio = noise_per_clip(sigma, sampler.sample_rate, sampler.num_patients)
    assert ratio == pytest.approx(sigma / sampler.expected_patients)
    model = nn.Linear(200, 50, bias=False)  # 10,000 coordinates: the noise's std is measured to ~1.5%
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    private = make_private_per_patient(site_accountant(None), keys.stream("dp-noise"), module=model,
                                       optimizer=optimizer, criterion=nn.CrossEntropyLoss(), sampler=sampler,
                                       noise_multiplier=sigma, max_grad_norm=clip)
    assert private.optimizer.expected_batch_size == pytest.approx(sampler.sample_rate * sampler.num_patients)
    with torch.no_grad():
        model.weight.zero_()
    step = next(iter(sampler))
    private.begin_step(step)
    inputs = torch.zeros(len(step.indices), 200)  # zero inputs: every clipped gradient is zero, only noise remains
    private.criterion(private.module(inputs), torch.zeros(len(step.indices), dtype=torch.long)).backward()
    private.optimizer.step()
    moved = -model.weight.detach().flatten()  # lr 1, no momentum: the step is the noised averaged gradient
    assert float(moved.std()) / clip == pytest.approx(ratio, rel=0.05)
